//! Shoal's scheduling policy in plain Rust, with Kubernetes semantics.
//!
//! The same code runs natively in the host and inside the `default-scheduler`
//! and `binpack` Wasm components. A [`Policy`] keeps a [`View`] of nodes (by
//! host handle) and of the pods bound to them, fed by [`Policy::observe`];
//! [`Policy::filter`] and [`Policy::score`] then decide for one pod at a time.
//!
//! Filters: NodeUnschedulable, NodeName, TaintToleration, NodeAffinity
//! (nodeSelector and required affinity), NodeResourcesFit (cpu, memory, pod
//! count), PodTopologySpread (DoNotSchedule). Scores: NodeResourcesFit
//! LeastAllocated or MostAllocated, preferred NodeAffinity, TaintToleration
//! (PreferNoSchedule), PodTopologySpread (ScheduleAnyway).

#![forbid(unsafe_code)]

mod candidate;
mod config;
mod filter;
mod objects;
mod policy;
pub mod quantity;
mod resources;
mod score;
mod selector;
mod taints;
#[cfg(test)]
mod testing;
mod topology;
mod view;

pub use config::{Config, ConfigError, ScoreStrategy};
pub use filter::{REASON_AFFINITY, REASON_NODE_NAME, REASON_UNKNOWN_NODE, REASON_UNSCHEDULABLE};
pub use policy::{ObjectEvent, Policy, INTERESTS};
pub use quantity::Quantity;
pub use resources::{Resources, DEFAULT_MEMORY_REQUEST, DEFAULT_MILLI_CPU_REQUEST};
pub use score::MAX_SCORE;
pub use view::View;
