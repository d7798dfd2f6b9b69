//! Host bindings for the `shoal:plugin` worlds in `wit/`.
//!
//! This is the one place that runs `bindgen!` (as Spin does): everything else
//! uses the types generated here. The `scheduler` world is generated first and
//! owns the shared `log` and `types` interfaces; the other worlds map those
//! interfaces onto it with `with`, so there is a single `ObjectEvent` type and a
//! single `log::Host` trait for all four worlds.

/// Bindings for the `scheduler` world (and the shared `log` and `types`).
pub mod scheduler {
    wasmtime::component::bindgen!({
        world: "scheduler",
        path: "../wit",
    });
}

/// Bindings for the `admission` world. Its exports are called with
/// `call_async` on the request's own task (see `instance`), so they are
/// generated async; its one import, `log`, stays a plain host function.
pub mod admission {
    wasmtime::component::bindgen!({
        world: "admission",
        path: "../wit",
        exports: { default: async },
        with: {
            "shoal:plugin/log": crate::plugin::bindings::scheduler::shoal::plugin::log,
            "shoal:plugin/types": crate::plugin::bindings::scheduler::shoal::plugin::types,
        },
    });
}

/// Bindings for the `authorizer` world.
pub mod authorizer {
    wasmtime::component::bindgen!({
        world: "authorizer",
        path: "../wit",
        with: {
            "shoal:plugin/log": crate::plugin::bindings::scheduler::shoal::plugin::log,
            "shoal:plugin/types": crate::plugin::bindings::scheduler::shoal::plugin::types,
        },
    });
}

/// Bindings for the `router` world.
pub mod router {
    wasmtime::component::bindgen!({
        world: "router",
        path: "../wit",
        with: {
            "shoal:plugin/log": crate::plugin::bindings::scheduler::shoal::plugin::log,
            "shoal:plugin/types": crate::plugin::bindings::scheduler::shoal::plugin::types,
        },
    });
}

pub use scheduler::shoal::plugin::{log, types};

/// One change to an object in a plugin's view (`types.object-event`).
pub type ObjectEvent = types::ObjectEvent;
/// A scheduler's reason for rejecting a node (`scheduler-policy.rejection`).
pub type Rejection = scheduler::exports::shoal::plugin::scheduler_policy::Rejection;
/// An admission verdict (`admission-policy.admission-response`).
pub type AdmissionResponse = admission::exports::shoal::plugin::admission_policy::AdmissionResponse;
/// Request attributes seen by an authorizer (`authorizer-policy.attributes`).
pub type Attributes = authorizer::exports::shoal::plugin::authorizer_policy::Attributes;
/// An authorizer's decision (`authorizer-policy.decision`).
pub type Decision = authorizer::exports::shoal::plugin::authorizer_policy::Decision;
/// An authorizer's decision with its reason (`authorizer-policy.verdict`).
pub type Verdict = authorizer::exports::shoal::plugin::authorizer_policy::Verdict;
/// One endpoint of a service (`router-policy.endpoint`).
pub type Endpoint = router::exports::shoal::plugin::router_policy::Endpoint;
/// Where an endpoint receives traffic from (`router-policy.route`).
pub type Route = router::exports::shoal::plugin::router_policy::Route;
