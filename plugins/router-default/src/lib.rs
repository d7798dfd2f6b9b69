//! The default router component: Kubernetes `spec.trafficDistribution`
//! (PreferClose / PreferSameZone: own-zone hints; PreferSameNode: own-node
//! hints with own-zone fallback; unset: no hints), every weight 1.

wit_bindgen::generate!({
    world: "router",
    path: "../../wit",
});

use exports::shoal::plugin::router_policy::{Endpoint, Guest, ObjectEvent, Route};

struct Component;

fn core_endpoint(e: Endpoint) -> router_core::Endpoint {
    router_core::Endpoint {
        address: e.address,
        node: e.node,
        zone: e.zone,
        ready: e.ready,
        serving: e.serving,
        terminating: e.terminating,
        labels: e.labels,
    }
}

impl Guest for Component {
    fn interests() -> Vec<String> {
        // Endpoints arrive with their node and zone; no view needed.
        Vec::new()
    }

    fn configure(config: String) -> Result<(), String> {
        match config.trim() {
            "" | "{}" | "null" => Ok(()),
            other => Err(format!(
                "the default router takes no configuration, got {other}"
            )),
        }
    }

    fn observe(_events: Vec<ObjectEvent>) {}

    fn routes(service: String, endpoints: Vec<Endpoint>) -> Result<Vec<Route>, String> {
        let mode = router_core::traffic_distribution_of(&service)?;
        let eps: Vec<_> = endpoints.into_iter().map(core_endpoint).collect();
        Ok(router_core::traffic_distribution(mode.as_deref(), &eps)
            .into_iter()
            .map(|r| Route {
                address: r.address,
                weight: r.weight,
                for_nodes: r.for_nodes,
                for_zones: r.for_zones,
            })
            .collect())
    }
}

export!(Component);
