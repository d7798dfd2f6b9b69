//! Fault plugin: a scheduler whose `filter` and `score` trap (a Rust panic
//! aborts, which in Wasm is an `unreachable` trap). The host must contain it.

wit_bindgen::generate!({
    world: "scheduler",
    path: "../../wit",
});

use exports::shoal::plugin::scheduler_policy::{Guest, ObjectEvent, Rejection};

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        vec!["Node".to_string()]
    }

    fn configure(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn observe(_events: Vec<ObjectEvent>) {}

    fn filter(_pod: String, _nodes: Vec<u32>) -> Vec<Rejection> {
        panic!("fault-trap: filter traps on purpose");
    }

    fn score(_pod: String, _nodes: Vec<u32>) -> Vec<u32> {
        panic!("fault-trap: score traps on purpose");
    }
}

export!(Component);
