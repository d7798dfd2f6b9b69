//! A scheduling policy as the scheduler sees it: a Wasm plugin instance, or
//! (for benchmarks) the same policy code compiled natively into the host.

use crate::plugin::bindings::ObjectEvent;
use crate::plugin::{LoadedPlugin, PluginError, SchedulerInstance};
use std::sync::Arc;

/// One policy instance with its own view.
pub trait Policy: Send {
    /// Kinds the policy wants in its view.
    fn interests(&mut self) -> Result<Vec<String>, PluginError>;
    /// Feed view changes.
    fn observe(&mut self, events: &[ObjectEvent]) -> Result<(), PluginError>;
    /// Rejected nodes with reasons.
    fn filter(&mut self, pod: &str, nodes: &[u32]) -> Result<Vec<(u32, String)>, PluginError>;
    /// Scores 0..=100 per node, or empty for no opinion.
    fn score(&mut self, pod: &str, nodes: &[u32]) -> Result<Vec<u32>, PluginError>;
}

/// A Wasm scheduler plugin instance.
pub struct WasmPolicy {
    instance: SchedulerInstance,
}

impl WasmPolicy {
    /// Instantiate and configure.
    pub fn new(loaded: &Arc<LoadedPlugin>, config: &str) -> Result<WasmPolicy, PluginError> {
        let mut instance = loaded.instantiate_scheduler()?;
        instance.configure(config)?;
        Ok(WasmPolicy { instance })
    }
}

impl Policy for WasmPolicy {
    fn interests(&mut self) -> Result<Vec<String>, PluginError> {
        self.instance.interests()
    }
    fn observe(&mut self, events: &[ObjectEvent]) -> Result<(), PluginError> {
        self.instance.observe(events)
    }
    fn filter(&mut self, pod: &str, nodes: &[u32]) -> Result<Vec<(u32, String)>, PluginError> {
        self.instance.filter(pod, nodes)
    }
    fn score(&mut self, pod: &str, nodes: &[u32]) -> Result<Vec<u32>, PluginError> {
        self.instance.score(pod, nodes)
    }
}

/// The default policies compiled natively (for the native-vs-Wasm benchmark).
pub struct NativePolicy {
    policy: scheduler_core::Policy,
}

impl NativePolicy {
    /// A native policy with a JSON config over `base` (the built-in default or binpack).
    pub fn new(binpack: bool, config: &str) -> Result<NativePolicy, PluginError> {
        let base = if binpack {
            scheduler_core::Config::binpack()
        } else {
            scheduler_core::Config::default()
        };
        let cfg = scheduler_core::Config::from_json_over(config, base)
            .map_err(|e| PluginError::Runtime(format!("native policy config: {e}")))?;
        Ok(NativePolicy {
            policy: scheduler_core::Policy::new(cfg),
        })
    }
}

impl Policy for NativePolicy {
    fn interests(&mut self) -> Result<Vec<String>, PluginError> {
        Ok(scheduler_core::INTERESTS
            .iter()
            .map(|s| s.to_string())
            .collect())
    }
    fn observe(&mut self, events: &[ObjectEvent]) -> Result<(), PluginError> {
        for e in events {
            self.policy
                .observe_one(&e.kind, e.handle, e.deleted, &e.object);
        }
        Ok(())
    }
    fn filter(&mut self, pod: &str, nodes: &[u32]) -> Result<Vec<(u32, String)>, PluginError> {
        Ok(self.policy.filter(pod, nodes))
    }
    fn score(&mut self, pod: &str, nodes: &[u32]) -> Result<Vec<u32>, PluginError> {
        Ok(self.policy.score(pod, nodes))
    }
}
