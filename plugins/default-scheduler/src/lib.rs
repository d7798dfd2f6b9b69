//! The default scheduler component: `scheduler-core`'s Kubernetes filters and
//! scores (least-allocated unless configured otherwise) behind the `scheduler` world.

use std::cell::RefCell;

use scheduler_core::{Config, Policy, INTERESTS};

wit_bindgen::generate!({
    world: "scheduler",
    path: "../../wit",
});

use exports::shoal::plugin::scheduler_policy::{Guest, ObjectEvent, Rejection};
use shoal::plugin::log::{write, Level};

/// The configuration used when the Plugin object sets none.
fn base() -> Config {
    Config::default()
}

thread_local! {
    // A component instance is single-threaded; the policy lives for the instance.
    static POLICY: RefCell<Policy> = RefCell::new(Policy::new(base()));
}

struct Component;

impl Guest for Component {
    fn interests() -> Vec<String> {
        INTERESTS.iter().map(|k| k.to_string()).collect()
    }

    fn configure(config: String) -> Result<(), String> {
        let config = Config::from_json_over(&config, base()).map_err(|e| e.to_string())?;
        write(
            Level::Info,
            &format!(
                "default-scheduler: score={} filters={}",
                config.score.as_str(),
                config.filters
            ),
        );
        POLICY.with_borrow_mut(|p| p.set_config(config));
        Ok(())
    }

    fn observe(events: Vec<ObjectEvent>) {
        POLICY.with_borrow_mut(|p| {
            for e in &events {
                p.observe_one(&e.kind, e.handle, e.deleted, &e.object);
            }
        });
    }

    fn filter(pod: String, nodes: Vec<u32>) -> Vec<Rejection> {
        POLICY
            .with_borrow(|p| p.filter(&pod, &nodes))
            .into_iter()
            .map(|(node, reason)| Rejection { node, reason })
            .collect()
    }

    fn score(pod: String, nodes: Vec<u32>) -> Vec<u32> {
        POLICY.with_borrow(|p| p.score(&pod, &nodes))
    }
}

export!(Component);
