//! Pod requests and node allocatable, computed as Kubernetes does.

use crate::objects::{Container, NodeStatus, PodSpec, ResourceList};
use crate::quantity::Quantity;

/// CPU counted for a container that requests none, when scoring (100m).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory counted for a container that requests none, when scoring (200 MiB).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// CPU, memory and pod count, in Kubernetes' integer units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Number of pods.
    pub pods: i64,
}

impl Resources {
    pub(crate) fn add(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(other.milli_cpu);
        self.memory = self.memory.saturating_add(other.memory);
        self.pods = self.pods.saturating_add(other.pods);
    }

    pub(crate) fn sub(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(other.milli_cpu);
        self.memory = self.memory.saturating_sub(other.memory);
        self.pods = self.pods.saturating_sub(other.pods);
    }
}

/// Exact CPU and memory sums, converted to integers only at the end (as
/// Kubernetes adds `Quantity` values and then takes `MilliValue`/`Value`).
#[derive(Debug, Clone, Copy, Default)]
struct Sum {
    cpu: Quantity,
    memory: Quantity,
}

impl Sum {
    fn add(&mut self, other: Sum) {
        self.cpu = self.cpu.saturating_add(other.cpu);
        self.memory = self.memory.saturating_add(other.memory);
    }

    fn max(&mut self, other: Sum) {
        self.cpu = self.cpu.max(other.cpu);
        self.memory = self.memory.max(other.memory);
    }
}

fn get(list: &ResourceList, name: &str) -> Option<Quantity> {
    list.get(name).map(|q| q.0)
}

/// One container's requests; with `defaults`, a missing (not zero) cpu or
/// memory request counts as 100m / 200Mi, as the scheduler's scoring does.
fn container_sum(c: &Container, defaults: bool) -> Sum {
    let req = &c.resources.requests;
    let or_default = |name, default| match get(req, name) {
        Some(q) => q,
        None if defaults => default,
        None => Quantity::ZERO,
    };
    Sum {
        cpu: or_default("cpu", Quantity::from_milli(DEFAULT_MILLI_CPU_REQUEST)),
        memory: or_default("memory", Quantity::from_units(DEFAULT_MEMORY_REQUEST)),
    }
}

/// A pod's effective requests: the sum over containers, raised to what any
/// init container needs while it runs (restartable "sidecar" init containers
/// keep running, so they add to both), plus the pod overhead. `pods` is 1.
pub(crate) fn pod_requests(spec: &PodSpec, defaults: bool) -> Resources {
    let mut total = Sum::default();
    for c in &spec.containers {
        total.add(container_sum(c, defaults));
    }
    let mut sidecars = Sum::default();
    let mut init_peak = Sum::default();
    for c in &spec.init_containers {
        let own = container_sum(c, defaults);
        let while_running = if c.restart_policy.as_deref() == Some("Always") {
            total.add(own);
            sidecars.add(own);
            sidecars
        } else {
            let mut with_sidecars = own;
            with_sidecars.add(sidecars);
            with_sidecars
        };
        init_peak.max(while_running);
    }
    total.max(init_peak);
    total.add(Sum {
        cpu: get(&spec.overhead, "cpu").unwrap_or_default(),
        memory: get(&spec.overhead, "memory").unwrap_or_default(),
    });
    Resources {
        milli_cpu: total.cpu.milli_value(),
        memory: total.memory.value(),
        pods: 1,
    }
}

/// A node's allocatable resources. The API server defaults `allocatable` to
/// `capacity` when it is unset; this does the same.
pub(crate) fn node_allocatable(status: &NodeStatus) -> Resources {
    let empty = ResourceList::new();
    let list = status
        .allocatable
        .as_ref()
        .or(status.capacity.as_ref())
        .unwrap_or(&empty);
    Resources {
        milli_cpu: get(list, "cpu").unwrap_or_default().milli_value(),
        memory: get(list, "memory").unwrap_or_default().value(),
        pods: get(list, "pods").unwrap_or_default().value(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Pod;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> PodSpec {
        serde_json::from_value::<Pod>(json!({ "spec": v }))
            .unwrap()
            .spec
    }

    fn c(cpu: &str, mem: &str) -> serde_json::Value {
        json!({"name": "c", "resources": {"requests": {"cpu": cpu, "memory": mem}}})
    }

    #[test]
    fn containers_add_up() {
        let s = spec(json!({"containers": [c("100m", "64Mi"), c("0.25", "64Mi")]}));
        let r = pod_requests(&s, false);
        assert_eq!((r.milli_cpu, r.memory, r.pods), (350, 128 << 20, 1));
    }

    #[test]
    fn init_containers_count_as_their_peak() {
        // Main containers: 300m / 100Mi. Init: 500m / 50Mi. Max per resource.
        let s = spec(json!({
            "containers": [c("300m", "100Mi")],
            "initContainers": [c("500m", "50Mi"), c("200m", "10Mi")]
        }));
        let r = pod_requests(&s, false);
        assert_eq!((r.milli_cpu, r.memory), (500, 100 << 20));
    }

    #[test]
    fn sidecars_add_to_everything_after_them() {
        // Sidecar 100m runs alongside the later init (400m) and the main container.
        let mut sidecar = c("100m", "0");
        sidecar["restartPolicy"] = json!("Always");
        let s = spec(json!({
            "containers": [c("200m", "0")],
            "initContainers": [sidecar, c("400m", "0")]
        }));
        let r = pod_requests(&s, false);
        assert_eq!(r.milli_cpu, 500, "max(200+100, 100+400)");
    }

    #[test]
    fn overhead_is_added() {
        let s = spec(json!({
            "containers": [c("100m", "10Mi")],
            "overhead": {"cpu": "250m", "memory": "1Mi"}
        }));
        let r = pod_requests(&s, false);
        assert_eq!((r.milli_cpu, r.memory), (350, 11 << 20));
    }

    #[test]
    fn defaults_fill_missing_requests_only() {
        let s = spec(json!({"containers": [
            {"name": "a"},
            {"name": "b", "resources": {"requests": {"cpu": "0", "memory": "1Mi"}}}
        ]}));
        let plain = pod_requests(&s, false);
        assert_eq!((plain.milli_cpu, plain.memory), (0, 1 << 20));
        let scored = pod_requests(&s, true);
        assert_eq!(
            scored.milli_cpu, DEFAULT_MILLI_CPU_REQUEST,
            "explicit 0 stays 0"
        );
        assert_eq!(scored.memory, DEFAULT_MEMORY_REQUEST + (1 << 20));
    }

    #[test]
    fn sums_round_once() {
        let s = spec(json!({"containers": [c("0.5m", "0"), c("0.5m", "0")]}));
        assert_eq!(pod_requests(&s, false).milli_cpu, 1);
    }

    #[test]
    fn allocatable_falls_back_to_capacity() {
        let status = |v| serde_json::from_value::<NodeStatus>(v).unwrap();
        let a = node_allocatable(&status(json!({
            "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
            "allocatable": {"cpu": "7500m", "memory": "15Gi", "pods": "100"}
        })));
        assert_eq!((a.milli_cpu, a.memory, a.pods), (7500, 15 << 30, 100));
        let c = node_allocatable(&status(json!({"capacity": {"cpu": "2", "pods": 10}})));
        assert_eq!((c.milli_cpu, c.memory, c.pods), (2000, 0, 10));
        assert_eq!(node_allocatable(&status(json!({}))), Resources::default());
    }
}
