//! Authorizer plugins: a small pool of instances per plugin, all fed the same
//! view, so concurrent requests decide in parallel.
//!
//! A feeder task consumes the published plugin set (like the scheduler does):
//! for every `authorizer` plugin it instantiates a pool, asks its interests,
//! lists those kinds from the store and replays them, then watches them and
//! forwards each change to every instance with `observe`. Instances that
//! trap or time out are poisoned; the next decision that lands on one
//! re-instantiates it and replays the view. A failing call is no-opinion.
//!
//! Lock order: view, then an instance slot. Decisions take only a slot (and
//! the view when they rebuild a poisoned instance).

use super::Authorizer;
use crate::api::resources::{self, ResourceInfo};
use crate::plugin::{
    Attributes, AuthorizerInstance, Decision, LoadedPlugin, ObjectEvent, PluginKind,
};
use crate::plugin_objects::PluginSet;
use crate::store::EventKind;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::watch;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Instances per plugin: one per core, at least two, at most four.
fn pool_size() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4)
}

/// The objects plugins asked for: kind → key → (handle, JSON).
#[derive(Default)]
pub struct View {
    objects: HashMap<String, BTreeMap<String, (u32, String)>>,
    next_handle: u32,
}

impl View {
    /// Apply a put or delete; returns the event to deliver.
    fn apply(&mut self, kind: &str, key: &str, deleted: bool, json: String) -> ObjectEvent {
        let objs = self.objects.entry(kind.to_string()).or_default();
        if deleted {
            let handle = objs.remove(key).map_or(0, |(h, _)| h);
            return ObjectEvent {
                kind: kind.into(),
                handle,
                deleted: true,
                object: json,
            };
        }
        let handle = match objs.get(key) {
            Some((h, _)) => *h,
            None => {
                self.next_handle += 1;
                self.next_handle
            }
        };
        objs.insert(key.to_string(), (handle, json.clone()));
        ObjectEvent {
            kind: kind.into(),
            handle,
            deleted: false,
            object: json,
        }
    }

    /// Everything of `kinds`, as events for a fresh instance.
    fn replay(&self, kinds: &[String]) -> Vec<ObjectEvent> {
        let mut out = Vec::new();
        for k in kinds {
            for (h, json) in self.objects.get(k).into_iter().flat_map(|m| m.values()) {
                out.push(ObjectEvent {
                    kind: k.clone(),
                    handle: *h,
                    deleted: false,
                    object: json.clone(),
                });
            }
        }
        out
    }
}

/// One authorizer plugin's instances.
pub struct Pool {
    name: String,
    loaded: Arc<LoadedPlugin>,
    config: String,
    interests: Vec<String>,
    slots: Vec<Mutex<Option<AuthorizerInstance>>>,
    next: AtomicUsize,
}

impl Pool {
    fn fresh(&self, view: &View) -> Result<AuthorizerInstance, crate::plugin::PluginError> {
        fresh_instance(&self.loaded, &self.config, view, &self.interests)
    }

    fn wants(&self, kind: &str) -> bool {
        self.interests.iter().any(|k| k == kind)
    }
}

fn fresh_instance(
    loaded: &LoadedPlugin,
    config: &str,
    view: &View,
    interests: &[String],
) -> Result<AuthorizerInstance, crate::plugin::PluginError> {
    let mut inst = loaded.instantiate_authorizer()?;
    inst.configure(config)?;
    let events = view.replay(interests);
    if !events.is_empty() {
        inst.observe(&events)?;
    }
    Ok(inst)
}

/// The live pools (name order) and their shared view.
pub struct Pools {
    live: RwLock<Arc<Vec<Arc<Pool>>>>,
    view: Mutex<View>,
    ready: watch::Sender<bool>,
}

impl Pools {
    /// No plugins yet.
    pub fn new() -> Pools {
        Pools {
            live: RwLock::new(Arc::new(Vec::new())),
            view: Mutex::new(View::default()),
            ready: watch::channel(false).0,
        }
    }

    /// Resolves once a plugin set with authorizers has been installed.
    pub async fn ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Ask each plugin in order; the first allow or deny wins.
    pub fn decide(&self, attrs: &Attributes) -> Option<(Decision, String)> {
        let pools = self
            .live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for p in pools.iter() {
            match self.call(p, attrs) {
                Some((Decision::NoOpinion, _)) | None => continue,
                Some(v) => return Some(v),
            }
        }
        None
    }

    fn call(&self, pool: &Pool, attrs: &Attributes) -> Option<(Decision, String)> {
        let n = pool.slots.len();
        let start = pool.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut guard = (0..n).find_map(|i| pool.slots[(start + i) % n].try_lock().ok());
        let mut slot = match guard.take() {
            Some(g) => g,
            None => lock(&pool.slots[start]),
        };
        if slot.is_none() {
            // Rebuild a poisoned instance; the view lock comes first.
            drop(slot);
            let view = lock(&self.view);
            let idx = start;
            slot = lock(&pool.slots[idx]);
            if slot.is_none() {
                match pool.fresh(&view) {
                    Ok(i) => *slot = Some(i),
                    Err(e) => {
                        tracing::warn!(plugin = %pool.name, error = %e, "authorizer plugin cannot be instantiated; no opinion");
                        return None;
                    }
                }
            }
        }
        let inst = slot.as_mut()?;
        match inst.authorize(attrs) {
            Ok(v) => Some((v.decision, v.reason)),
            Err(e) => {
                tracing::warn!(plugin = %pool.name, error = %e, "authorizer plugin call failed; no opinion");
                if e.poisons() {
                    *slot = None;
                }
                None
            }
        }
    }

    /// Apply store changes to the view and feed them to every instance.
    fn feed(&self, changes: Vec<(String, String, bool, String)>) {
        let mut view = lock(&self.view);
        let events: Vec<ObjectEvent> = changes
            .into_iter()
            .map(|(kind, key, deleted, json)| view.apply(&kind, &key, deleted, json))
            .collect();
        let pools = self
            .live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for p in pools.iter() {
            let mine: Vec<ObjectEvent> = events
                .iter()
                .filter(|e| p.wants(&e.kind))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            for s in &p.slots {
                let mut slot = lock(s);
                if let Some(inst) = slot.as_mut() {
                    if let Err(e) = inst.observe(&mine) {
                        tracing::warn!(plugin = %p.name, error = %e, "authorizer plugin observe failed; re-instantiating on next use");
                        *slot = None;
                    }
                }
            }
        }
    }
}

impl Default for Pools {
    fn default() -> Self {
        Pools::new()
    }
}

/// (name, generation, digest) of the authorizer plugins: a change rebuilds.
fn signature(set: &PluginSet) -> Vec<(String, i64, String)> {
    set.values()
        .filter(|e| e.kind == PluginKind::Authorizer)
        .map(|e| (e.name.clone(), e.generation, e.digest.clone()))
        .collect()
}

fn info_for_kind(kind: &str) -> Option<&'static ResourceInfo> {
    resources::RESOURCES.iter().find(|r| r.kind == kind)
}

/// Build pools for the set's authorizers (instantiating, not yet fed).
fn build(set: &PluginSet) -> Vec<Arc<Pool>> {
    let mut out = Vec::new();
    for e in set.values().filter(|e| e.kind == PluginKind::Authorizer) {
        let interests = match e
            .loaded
            .instantiate_authorizer()
            .and_then(|mut i| i.interests())
        {
            Ok(i) => i,
            Err(err) => {
                tracing::warn!(plugin = %e.name, error = %err, "authorizer plugin failed; skipping it");
                continue;
            }
        };
        out.push(Arc::new(Pool {
            name: e.name.clone(),
            loaded: e.loaded.clone(),
            config: e.config.clone(),
            interests,
            slots: (0..pool_size()).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
        }));
    }
    out
}

/// The feeder task: (re)build on plugin changes, relist, watch, feed.
pub async fn feeder(authz: Arc<Authorizer>, mut plugins: watch::Receiver<Arc<PluginSet>>) {
    'outer: loop {
        let set = plugins.borrow_and_update().clone();
        let sig = signature(&set);
        let pools = {
            let set = set.clone();
            tokio::task::spawn_blocking(move || build(&set))
                .await
                .unwrap_or_default()
        };
        let mut kinds: Vec<String> = pools.iter().flat_map(|p| p.interests.clone()).collect();
        kinds.sort();
        kinds.dedup();
        let infos: Vec<(String, &'static ResourceInfo)> = kinds
            .iter()
            .filter_map(|k| info_for_kind(k).map(|i| (k.clone(), i)))
            .collect();
        // List every kind at one revision, then watch from it.
        let store = authz.store.clone();
        let mut listed = Vec::new();
        let mut rev = None;
        for (kind, info) in &infos {
            match store.list(&info.prefix(None), None, 0, rev) {
                Ok(l) => {
                    rev.get_or_insert(l.revision);
                    for kv in l.items {
                        let json = String::from_utf8_lossy(&kv.value).into_owned();
                        listed.push((kind.clone(), kv.key, false, json));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "authorizer view: list failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue 'outer;
                }
            }
        }
        let from = rev.unwrap_or_else(|| store.current_revision());
        let mut watches = Vec::new();
        for (kind, info) in &infos {
            match store.watch(&info.prefix(None), from) {
                Ok(w) => {
                    let kind = kind.clone();
                    watches.push(w.map(move |r| (kind.clone(), r)).boxed());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "authorizer view: watch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue 'outer;
                }
            }
        }
        // Install: a fresh view, every instance replayed, then swap in.
        let me = authz.clone();
        let installed = tokio::task::spawn_blocking(move || {
            let p = &me.pools;
            let mut view = lock(&p.view);
            *view = View::default();
            for (kind, key, deleted, json) in listed {
                view.apply(&kind, &key, deleted, json);
            }
            for pool in &pools {
                for s in &pool.slots {
                    match pool.fresh(&view) {
                        Ok(i) => *lock(s) = Some(i),
                        Err(e) => {
                            tracing::warn!(plugin = %pool.name, error = %e, "authorizer plugin instance failed")
                        }
                    }
                }
            }
            let names: Vec<String> = pools.iter().map(|p| p.name.clone()).collect();
            *p.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pools);
            names
        })
        .await
        .unwrap_or_default();
        tracing::info!(plugins = ?installed, "authorizer plugins live");
        if !installed.is_empty() {
            authz.pools.ready.send_replace(true);
        }
        let mut all = futures::stream::select_all(watches);
        loop {
            tokio::select! {
                ev = all.next(), if !infos.is_empty() => {
                    let Some((kind, Ok(events))) = ev else {
                        tracing::warn!("authorizer view: watch ended; relisting");
                        continue 'outer;
                    };
                    let changes: Vec<_> = events
                        .into_iter()
                        .filter_map(|e| {
                            let (deleted, raw) = match e.kind {
                                EventKind::Put => (false, e.value?),
                                EventKind::Delete => (true, e.prev?),
                            };
                            Some((kind.clone(), e.key, deleted, String::from_utf8_lossy(&raw).into_owned()))
                        })
                        .collect();
                    let me = authz.clone();
                    let _ = tokio::task::spawn_blocking(move || me.pools.feed(changes)).await;
                }
                r = plugins.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if signature(&plugins.borrow()) != sig {
                        continue 'outer;
                    }
                }
            }
        }
    }
}

/// For benchmarks and tests: install `loaded` as the only authorizer with
/// `instances` instances (0: the default pool size), fed with `objects`
/// (kind, key, JSON), without a store.
pub fn install_for_test(
    pools: &Pools,
    loaded: Arc<LoadedPlugin>,
    instances: usize,
    objects: Vec<(String, String, String)>,
) -> Result<(), crate::plugin::PluginError> {
    let instances = if instances == 0 {
        pool_size()
    } else {
        instances
    };
    let interests = loaded.instantiate_authorizer()?.interests()?;
    let pool = Arc::new(Pool {
        name: loaded.name().to_string(),
        loaded,
        config: "{}".into(),
        interests,
        slots: (0..instances).map(|_| Mutex::new(None)).collect(),
        next: AtomicUsize::new(0),
    });
    let mut view = lock(&pools.view);
    for (kind, key, json) in objects {
        view.apply(&kind, &key, false, json);
    }
    for s in &pool.slots {
        *lock(s) = Some(pool.fresh(&view)?);
    }
    *pools.live.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(vec![pool]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{artifacts, PluginRuntime, RuntimeConfig};
    use serde_json::json;

    fn attrs(user: &str, verb: &str, ns: &str, resource: &str) -> Attributes {
        Attributes {
            user: user.into(),
            groups: vec!["system:authenticated".into()],
            verb: verb.into(),
            resource_request: true,
            namespace: ns.into(),
            api_group: String::new(),
            resource: resource.into(),
            subresource: String::new(),
            name: String::new(),
            path: String::new(),
        }
    }

    #[test]
    fn wasm_rbac_pool_decides_and_follows_changes() {
        let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
        let loaded = Arc::new(
            runtime
                .load("rbac", PluginKind::Authorizer, artifacts::RBAC)
                .unwrap(),
        );
        let pools = Pools::new();
        let role = json!({"metadata": {"name": "view"}, "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]});
        let binding = json!({"metadata": {"name": "b", "namespace": "team"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": "alice"}]});
        install_for_test(
            &pools,
            loaded,
            3,
            vec![
                ("ClusterRole".into(), "/r/view".into(), role.to_string()),
                (
                    "RoleBinding".into(),
                    "/b/team/b".into(),
                    binding.to_string(),
                ),
            ],
        )
        .unwrap();
        // Every instance of the pool got the view.
        for _ in 0..6 {
            let (d, reason) = pools
                .decide(&attrs("alice", "list", "team", "pods"))
                .unwrap();
            assert_eq!(d, Decision::Allow);
            assert!(reason.contains("RoleBinding \"b/team\""), "{reason}");
        }
        assert_eq!(
            pools
                .decide(&attrs("alice", "list", "other", "pods"))
                .map(|v| v.0),
            None
        );
        // No opinion from every plugin: `decide` has no answer (the chain goes on).
        // A deletion reaches every instance.
        pools.feed(vec![(
            "RoleBinding".into(),
            "/b/team/b".into(),
            true,
            binding.to_string(),
        )]);
        for _ in 0..6 {
            assert_eq!(
                pools
                    .decide(&attrs("alice", "list", "team", "pods"))
                    .map(|v| v.0),
                None
            );
        }
    }
}
