//! Fault plugin: a component of the `router` world. Installing it as a
//! scheduler must be refused because it does not export `scheduler-policy`.

wit_bindgen::generate!({
    world: "router",
    path: "../../wit",
});

use exports::shoal::plugin::router_policy::{Endpoint, Guest, ObjectEvent, Route};

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        Vec::new()
    }

    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn observe(_events: Vec<ObjectEvent>) {}

    fn routes(_service: String, endpoints: Vec<Endpoint>) -> Result<Vec<Route>, String> {
        Ok(endpoints
            .into_iter()
            .map(|e| Route {
                address: e.address,
                weight: 1,
                for_nodes: Vec::new(),
                for_zones: Vec::new(),
            })
            .collect())
    }
}

export!(Component);
