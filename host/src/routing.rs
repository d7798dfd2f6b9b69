//! Router plugins as the EndpointSlice controller calls them: one instance
//! per router Plugin, configured with its `spec.config`, fed the kinds it asks
//! for (`Node`) through `observe`, and re-instantiated when the Plugin's
//! module or config changes or after a call poisoned it.
//!
//! Calls are synchronous (the plugin runtime's contract); the controller runs
//! them under `spawn_blocking`.

use crate::plugin::{Endpoint, LoadedPlugin, ObjectEvent, PluginError, Route, RouterInstance};
use crate::plugin_objects::PluginEntry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// The parts of a router Plugin the routers need.
#[derive(Clone)]
pub struct RouterPlugin {
    /// Plugin name.
    pub name: String,
    /// `metadata.generation`: a change means "re-instantiate and configure".
    pub generation: i64,
    /// Module digest.
    pub digest: String,
    /// `spec.config` as JSON text.
    pub config: String,
    /// The loaded module.
    pub loaded: Arc<LoadedPlugin>,
}

impl From<&PluginEntry> for RouterPlugin {
    fn from(e: &PluginEntry) -> RouterPlugin {
        RouterPlugin {
            name: e.name.clone(),
            generation: e.generation,
            digest: e.digest.clone(),
            config: e.config.clone(),
            loaded: e.loaded.clone(),
        }
    }
}

/// The nodes routers see, with host-assigned handles stable per node name.
#[derive(Default)]
pub struct NodeView {
    version: u64,
    next_handle: u32,
    nodes: BTreeMap<String, ViewNode>,
}

struct ViewNode {
    handle: u32,
    resource_version: String,
    json: String,
}

impl NodeView {
    /// Replace the view with `nodes` as (name, resourceVersion, JSON); the
    /// version moves only when something changed.
    pub fn replace(&mut self, nodes: Vec<(String, String, String)>) {
        let mut next = BTreeMap::new();
        let mut changed = nodes.len() != self.nodes.len();
        for (name, rv, json) in nodes {
            let handle = match self.nodes.get(&name) {
                Some(n) => {
                    changed |= n.resource_version != rv;
                    n.handle
                }
                None => {
                    changed = true;
                    self.next_handle += 1;
                    self.next_handle
                }
            };
            next.insert(
                name,
                ViewNode {
                    handle,
                    resource_version: rv,
                    json,
                },
            );
        }
        self.nodes = next;
        if changed {
            self.version += 1;
        }
    }

    /// Bumped on every change.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// One live router instance.
struct Slot {
    generation: i64,
    digest: String,
    instance: RouterInstance,
    wants_nodes: bool,
    /// The node view version this instance has seen, and what it holds.
    seen_version: u64,
    seen: HashMap<String, (u32, String)>,
}

/// Why a router could not be used.
#[derive(Debug)]
pub enum RouterFailure {
    /// Instantiating or configuring failed: the Plugin should be marked Failed.
    Setup(PluginError),
    /// One call failed (trap, timeout, or the plugin's own error).
    Call(PluginError),
}

impl std::fmt::Display for RouterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouterFailure::Setup(e) | RouterFailure::Call(e) => e.fmt(f),
        }
    }
}

/// The router instances, by Plugin name.
#[derive(Default)]
pub struct Routers {
    slots: HashMap<String, Slot>,
}

impl Routers {
    /// Whether any live router asked for nodes.
    pub fn wants_nodes(&self) -> bool {
        self.slots.values().any(|s| s.wants_nodes)
    }

    /// Drop instances of plugins no longer published.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.slots.retain(|name, _| keep(name));
    }

    /// Routes for one service from the router `entry`.
    pub fn routes(
        &mut self,
        entry: &RouterPlugin,
        nodes: &NodeView,
        service_json: &str,
        endpoints: &[Endpoint],
    ) -> Result<Vec<Route>, RouterFailure> {
        let fresh = self.slots.get(&entry.name).is_some_and(|s| {
            s.generation == entry.generation
                && s.digest == entry.digest
                && !s.instance.is_poisoned()
        });
        if !fresh {
            self.slots.remove(&entry.name);
            let slot = instantiate(entry).map_err(RouterFailure::Setup)?;
            self.slots.insert(entry.name.clone(), slot);
        }
        let slot = self.slots.get_mut(&entry.name).expect("just ensured");
        let result = sync_nodes(slot, nodes)
            .and_then(|()| slot.instance.route(service_json, endpoints))
            .map_err(RouterFailure::Call);
        if slot.instance.is_poisoned() {
            self.slots.remove(&entry.name);
        }
        result
    }
}

fn instantiate(entry: &RouterPlugin) -> Result<Slot, PluginError> {
    let mut instance = entry.loaded.instantiate_router()?;
    instance.configure(&entry.config)?;
    let interests = instance.interests()?;
    Ok(Slot {
        generation: entry.generation,
        digest: entry.digest.clone(),
        instance,
        wants_nodes: interests.iter().any(|k| k == "Node"),
        seen_version: 0,
        seen: HashMap::new(),
    })
}

/// Bring the instance's view of nodes up to `nodes` with one `observe` batch.
fn sync_nodes(slot: &mut Slot, nodes: &NodeView) -> Result<(), PluginError> {
    if !slot.wants_nodes || slot.seen_version == nodes.version {
        return Ok(());
    }
    let mut events = Vec::new();
    for (name, n) in &nodes.nodes {
        if slot.seen.get(name).map(|(_, rv)| rv) != Some(&n.resource_version) {
            events.push(ObjectEvent {
                kind: "Node".into(),
                handle: n.handle,
                deleted: false,
                object: n.json.clone(),
            });
        }
    }
    for (name, (handle, _)) in &slot.seen {
        if !nodes.nodes.contains_key(name) {
            events.push(ObjectEvent {
                kind: "Node".into(),
                handle: *handle,
                deleted: true,
                object: format!(r#"{{"kind":"Node","metadata":{{"name":{name:?}}}}}"#),
            });
        }
    }
    if !events.is_empty() {
        slot.instance.observe(&events)?;
    }
    slot.seen = nodes
        .nodes
        .iter()
        .map(|(k, n)| (k.clone(), (n.handle, n.resource_version.clone())))
        .collect();
    slot.seen_version = nodes.version;
    Ok(())
}

/// No hints and weight 1 for every endpoint: what a service gets when its
/// router fails.
pub fn fallback(endpoints: &[Endpoint]) -> Vec<Route> {
    endpoints
        .iter()
        .map(|e| Route {
            address: e.address.clone(),
            weight: 1,
            for_nodes: Vec::new(),
            for_zones: Vec::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_view_versions_only_on_change() {
        let mut v = NodeView::default();
        v.replace(vec![("a".into(), "1".into(), "{}".into())]);
        let v1 = v.version();
        let h = v.nodes["a"].handle;
        v.replace(vec![("a".into(), "1".into(), "{}".into())]);
        assert_eq!(v.version(), v1);
        v.replace(vec![
            ("a".into(), "2".into(), "{}".into()),
            ("b".into(), "1".into(), "{}".into()),
        ]);
        assert!(v.version() > v1);
        assert_eq!(v.nodes["a"].handle, h, "handles are stable");
        assert_ne!(v.nodes["b"].handle, h);
    }

    fn entry(
        rt: &crate::plugin::PluginRuntime,
        name: &str,
        bytes: &[u8],
        config: &str,
        generation: i64,
    ) -> RouterPlugin {
        let loaded = rt
            .load(name, crate::plugin::PluginKind::Router, bytes)
            .unwrap();
        RouterPlugin {
            name: name.into(),
            digest: crate::blobs::digest_of(bytes),
            config: config.into(),
            generation,
            loaded: Arc::new(loaded),
        }
    }

    fn ep(addr: &str, node: &str, zone: &str, track: &str) -> Endpoint {
        Endpoint {
            address: addr.into(),
            node: Some(node.into()),
            zone: Some(zone.into()),
            ready: true,
            serving: true,
            terminating: false,
            labels: vec![("track".into(), track.into())],
        }
    }

    #[test]
    fn the_wasm_routers_route() {
        let rt = crate::plugin::PluginRuntime::new(crate::plugin::RuntimeConfig {
            cache_dir: None,
            limits: Default::default(),
        })
        .unwrap();
        let canary_bytes = std::fs::read(crate::plugin::artifacts::ROUTER_CANARY_PATH).unwrap();
        let mut routers = Routers::default();
        let nodes = NodeView::default();
        let eps = [
            ep("10.0.0.1", "n1", "a", "stable"),
            ep("10.0.0.2", "n2", "b", "stable"),
            ep("10.0.0.3", "n2", "b", "stable"),
            ep("10.0.0.4", "n1", "a", "stable"),
            ep("10.0.0.5", "n1", "a", "canary"),
        ];

        // The default router: trafficDistribution hints, weights 1.
        let default = entry(
            &rt,
            "default-router",
            crate::plugin::artifacts::ROUTER_DEFAULT,
            "{}",
            1,
        );
        let svc = r#"{"spec":{"trafficDistribution":"PreferSameZone"}}"#;
        let r = routers.routes(&default, &nodes, svc, &eps).unwrap();
        assert_eq!(r.len(), 5);
        assert!(r.iter().all(|r| r.weight == 1 && r.for_nodes.is_empty()));
        assert_eq!(r[1].for_zones, ["b"]);
        let r = routers
            .routes(&default, &nodes, r#"{"spec":{}}"#, &eps)
            .unwrap();
        assert!(r.iter().all(|r| r.for_zones.is_empty()));
        let svc = r#"{"spec":{"trafficDistribution":"PreferSameNode"}}"#;
        let r = routers.routes(&default, &nodes, svc, &eps).unwrap();
        assert_eq!(
            (r[0].for_nodes.as_slice(), r[0].for_zones.as_slice()),
            (&["n1".to_string()][..], &["a".to_string()][..])
        );

        // The canary router: group totals 90/10, then 50/50 after a config change.
        let cfg = r#"{"label":"track","weights":{"stable":90,"canary":10}}"#;
        let canary = entry(&rt, "canary", &canary_bytes, cfg, 1);
        let total = |r: &[Route], track: &str| -> u32 {
            r.iter()
                .zip(&eps)
                .filter(|(_, e)| e.labels[0].1 == track)
                .map(|(r, _)| r.weight)
                .sum()
        };
        let r = routers.routes(&canary, &nodes, "{}", &eps).unwrap();
        assert_eq!(total(&r, "stable") * 10, total(&r, "canary") * 90, "{r:?}");
        let cfg = r#"{"label":"track","weights":{"stable":50,"canary":50}}"#;
        let canary2 = entry(&rt, "canary", &canary_bytes, cfg, 2);
        let r = routers.routes(&canary2, &nodes, "{}", &eps).unwrap();
        assert_eq!(total(&r, "stable"), total(&r, "canary"), "{r:?}");

        // A config the plugin refuses fails its setup, with the plugin's reason.
        let bad = entry(&rt, "bad", &canary_bytes, r#"{"weights":{}}"#, 1);
        match routers.routes(&bad, &nodes, "{}", &eps) {
            Err(RouterFailure::Setup(e)) => assert!(e.to_string().contains("label"), "{e}"),
            other => panic!("expected a setup failure, got {other:?}"),
        }
    }
}
