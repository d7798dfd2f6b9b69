//! Fault plugin: a scheduler whose `filter` never returns. The host's
//! deadline (epoch interruption) must stop it.

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

    fn filter(_pod: String, nodes: Vec<u32>) -> Vec<Rejection> {
        let mut spins: u64 = 0;
        loop {
            // black_box keeps the loop from being reasoned away.
            spins = std::hint::black_box(spins.wrapping_add(nodes.len() as u64 + 1));
        }
    }

    fn score(_pod: String, _nodes: Vec<u32>) -> Vec<u32> {
        Vec::new()
    }
}

export!(Component);
