//! The canary router component: splits a service's traffic between groups
//! of endpoints named by a pod label, by the weights in the Plugin's
//! `spec.config`, e.g. `{"label": "track", "weights": {"stable": 90, "canary": 10}}`.
//! Endpoints whose label names no configured group get `others` (default 0).

use std::cell::RefCell;

wit_bindgen::generate!({
    world: "router",
    path: "../../wit",
});

use exports::shoal::plugin::router_policy::{Endpoint, Guest, ObjectEvent, Route};
use shoal::plugin::log::{write, Level};

thread_local! {
    // A component instance is single-threaded; the config lives for the instance.
    static CONFIG: RefCell<Option<router_core::Canary>> = const { RefCell::new(None) };
}

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        Vec::new()
    }

    fn configure(config: String) -> Result<(), String> {
        let c = router_core::Canary::from_json(&config)?;
        write(
            Level::Info,
            &format!(
                "router-canary: label={} weights={:?} others={}",
                c.label, c.weights, c.others
            ),
        );
        CONFIG.with_borrow_mut(|slot| *slot = Some(c));
        Ok(())
    }

    fn observe(_events: Vec<ObjectEvent>) {}

    fn routes(_service: String, endpoints: Vec<Endpoint>) -> Result<Vec<Route>, String> {
        let eps: Vec<router_core::Endpoint> = endpoints
            .into_iter()
            .map(|e| router_core::Endpoint {
                address: e.address,
                node: e.node,
                zone: e.zone,
                ready: e.ready,
                serving: e.serving,
                terminating: e.terminating,
                labels: e.labels,
            })
            .collect();
        CONFIG.with_borrow(|c| {
            let c = c.as_ref().ok_or("router-canary is not configured")?;
            Ok(c.routes(&eps)
                .into_iter()
                .map(|r| Route {
                    address: r.address,
                    weight: r.weight,
                    for_nodes: r.for_nodes,
                    for_zones: r.for_zones,
                })
                .collect())
        })
    }
}

export!(Component);
