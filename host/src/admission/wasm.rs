//! Admission plugins as the chain runs them: the current set (taken from the
//! Plugin controller's watch channel at every request, so an installed,
//! updated or removed plugin applies to the next request), sorted per phase,
//! each with a small pool of instances (an instance is not `Sync`, and calls
//! run concurrently). A poisoned instance (trap, timeout) is dropped and a
//! fresh one instantiated on the next call.

use super::spec::{AdmissionSpec, PluginType};
use super::view::View;
use crate::api::AppState;
use crate::plugin::{AdmissionInstance, AdmissionResponse, LoadedPlugin, PluginError};
use crate::plugin_objects::PluginSet;
use serde_json::Value;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::sync::watch;

/// Instances kept per plugin between calls (more may run at once; the rest are dropped).
const POOL_SIZE: usize = 8;

/// One admission plugin of the current set.
pub struct AdmissionPlugin {
    /// Plugin object name.
    pub name: String,
    /// Its rules, type, failure policy, timeout and order.
    pub spec: AdmissionSpec,
    generation: i64,
    digest: String,
    config: String,
    loaded: Arc<LoadedPlugin>,
    /// Idle instances, each with the view position it has observed up to.
    pool: Mutex<Vec<(AdmissionInstance, u64)>>,
    state: Option<Arc<AppState>>,
    /// The plugin's view, when it asked for kinds (decided by its first instance).
    view: OnceLock<Option<Arc<View>>>,
}

impl AdmissionPlugin {
    /// Review one request: take a pooled instance (or make one), bring its
    /// view up to date, call, and return the instance to the pool unless the
    /// call poisoned it.
    pub async fn review(&self, request: &str) -> Result<AdmissionResponse, PluginError> {
        let pooled = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let (mut instance, mut seq) = match pooled {
            Some(i) => i,
            None => self.instantiate().await?,
        };
        if let Some(Some(view)) = self.view.get() {
            match view.since(seq) {
                Some((events, next)) => {
                    if !events.is_empty() {
                        instance.observe(&events).await?;
                    }
                    seq = next;
                }
                // Too far behind: start over from the current objects.
                None => (instance, seq) = self.instantiate().await?,
            }
        }
        let result = instance.review(request).await;
        if !instance.is_poisoned() {
            let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < POOL_SIZE {
                pool.push((instance, seq));
            }
        }
        result
    }

    async fn instantiate(&self) -> Result<(AdmissionInstance, u64), PluginError> {
        let mut instance = self.loaded.instantiate_admission().await?;
        instance.configure(&self.config).await?;
        // The first instance tells which kinds the plugin wants in its view.
        let view = match self.view.get() {
            Some(v) => v.clone(),
            None => {
                let kinds = instance.interests().await?;
                let v = match (&self.state, kinds.is_empty()) {
                    (Some(state), false) => Some(View::start(state.clone(), &kinds)),
                    _ => None,
                };
                self.view.get_or_init(|| v).clone()
            }
        };
        let mut seq = 0;
        if let Some(view) = view {
            let (events, at) = view.snapshot();
            if !events.is_empty() {
                instance.observe(&events).await?;
            }
            seq = at;
        }
        Ok((instance, seq))
    }
}

#[cfg(test)]
impl AdmissionPlugin {
    /// A plugin outside any published set, for unit tests.
    pub(crate) fn for_test(
        name: &str,
        spec: AdmissionSpec,
        loaded: Arc<LoadedPlugin>,
        config: &str,
    ) -> AdmissionPlugin {
        AdmissionPlugin {
            name: name.into(),
            spec,
            generation: 1,
            digest: String::new(),
            config: config.into(),
            loaded,
            pool: Mutex::new(Vec::new()),
            state: None,
            view: OnceLock::new(),
        }
    }

    /// Instances waiting in the pool.
    pub(crate) fn pooled(&self) -> usize {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The admission plugins of one published set, per phase, in order.
#[derive(Default)]
pub struct Chain {
    source: Option<Arc<PluginSet>>,
    /// Mutating plugins, by ascending order then name.
    pub mutating: Vec<Arc<AdmissionPlugin>>,
    /// Validating plugins, by ascending order then name.
    pub validating: Vec<Arc<AdmissionPlugin>>,
}

impl Chain {
    /// True when no plugin is installed (the common fast path).
    pub fn is_empty(&self) -> bool {
        self.mutating.is_empty() && self.validating.is_empty()
    }

    fn find(&self, name: &str) -> Option<&Arc<AdmissionPlugin>> {
        self.mutating
            .iter()
            .chain(&self.validating)
            .find(|p| p.name == name)
    }
}

/// The Wasm part of the admission chain, fed by the Plugin controller.
#[derive(Default)]
pub struct WasmChain {
    rx: OnceLock<watch::Receiver<Arc<PluginSet>>>,
    state: OnceLock<Arc<AppState>>,
    current: RwLock<Arc<Chain>>,
}

impl WasmChain {
    /// An empty chain; [`WasmChain::attach`] connects it to the Plugin set.
    pub fn new() -> WasmChain {
        WasmChain::default()
    }

    /// Follow the Plugin controller's published set from now on.
    pub fn attach(&self, state: Arc<AppState>, rx: watch::Receiver<Arc<PluginSet>>) {
        let _ = self.state.set(state);
        let _ = self.rx.set(rx);
    }

    /// The chain for the latest published set, rebuilt (keeping the pools of
    /// unchanged plugins) when the set changed since the last request.
    pub fn current(&self) -> Arc<Chain> {
        let Some(rx) = self.rx.get() else {
            return Arc::new(Chain::default());
        };
        let set = rx.borrow().clone();
        {
            let cur = self.current.read().unwrap_or_else(|e| e.into_inner());
            if cur.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, &set)) {
                return cur.clone();
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if cur.source.as_ref().is_some_and(|s| Arc::ptr_eq(s, &set)) {
            return cur.clone();
        }
        let next = Arc::new(self.build(&cur, set));
        *cur = next.clone();
        next
    }

    fn build(&self, prev: &Chain, set: Arc<PluginSet>) -> Chain {
        let mut chain = Chain {
            source: Some(set.clone()),
            ..Chain::default()
        };
        for entry in set.values() {
            let Some(spec) = entry.admission.clone() else {
                continue;
            };
            let plugin = match prev.find(&entry.name) {
                Some(p) if p.generation == entry.generation && p.digest == entry.digest => {
                    p.clone()
                }
                _ => Arc::new(AdmissionPlugin {
                    name: entry.name.clone(),
                    spec,
                    generation: entry.generation,
                    digest: entry.digest.clone(),
                    config: entry.config.clone(),
                    loaded: entry.loaded.clone(),
                    pool: Mutex::new(Vec::new()),
                    state: self.state.get().cloned(),
                    view: OnceLock::new(),
                }),
            };
            match plugin.spec.plugin_type {
                PluginType::Mutating => chain.mutating.push(plugin),
                PluginType::Validating => chain.validating.push(plugin),
            }
        }
        let key = |p: &Arc<AdmissionPlugin>| (p.spec.order, p.name.clone());
        chain.mutating.sort_by_key(key);
        chain.validating.sort_by_key(key);
        chain
    }
}

/// The response's patch applied to `obj` (RFC 6902).
pub fn apply_patch(obj: &mut Value, patch: &str) -> Result<(), String> {
    let p: json_patch::Patch =
        serde_json::from_str(patch).map_err(|e| format!("the patch is not a JSON Patch: {e}"))?;
    json_patch::patch(obj, &p).map_err(|e| format!("the patch does not apply: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches_apply_in_order_and_bad_ones_are_refused() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        apply_patch(
            &mut pod,
            r#"[{"op":"add","path":"/metadata/labels","value":{"team":"a"}},
                {"op":"add","path":"/spec/containers/0/resources","value":{"requests":{"cpu":"100m"}}}]"#,
        )
        .unwrap();
        assert_eq!(pod["metadata"]["labels"]["team"], "a");
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"]["cpu"],
            "100m"
        );
        // A failing operation leaves the document as it was (json-patch is atomic).
        let before = pod.clone();
        let err = apply_patch(
            &mut pod,
            r#"[{"op":"replace","path":"/metadata/name","value":"q"},{"op":"remove","path":"/nope"}]"#,
        )
        .unwrap_err();
        assert!(err.contains("does not apply"), "{err}");
        assert_eq!(pod, before);
        assert!(apply_patch(&mut pod, r#"{"op":"add"}"#)
            .unwrap_err()
            .contains("not a JSON Patch"));
    }
}
