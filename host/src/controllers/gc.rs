//! The garbage collector: deletes objects whose owners are gone, and carries
//! out foreground and orphan propagation recorded as the `foregroundDeletion`
//! and `orphan` finalizers.
//!
//! Like Kubernetes' collector it is not a per-kind controller: one informer
//! per served resource (events excepted, as Kubernetes ignores them) feeds a
//! graph of uid → object and owner uid → dependents, and workers process uids
//! from a work queue. The graph only decides *what* to look at; every
//! decision to delete is confirmed with a live read of the owner (the graph
//! may not have seen an owner that was just created).

use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::resources::{self, ResourceInfo};
use crate::store::EventKind;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// Finalizer recorded for `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer recorded for `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";

/// Concurrent workers, as Kubernetes' default of 20 delete workers, scaled down.
const WORKERS: usize = 8;

/// One `metadata.ownerReferences` entry (the fields the collector uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OwnerRef {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    block_owner_deletion: Option<bool>,
}

/// The metadata the collector reads; everything else in an object is skipped
/// while parsing, which keeps watching every write cheap.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    owner_references: Vec<OwnerRef>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
    #[serde(default)]
    finalizers: Vec<String>,
}

#[derive(Deserialize)]
struct Partial {
    #[serde(default)]
    metadata: Meta,
}

/// One object in the graph.
#[derive(Debug, Clone)]
struct Node {
    res: &'static ResourceInfo,
    namespace: Option<String>,
    name: String,
    owners: Vec<OwnerRef>,
    deleting: bool,
    finalizers: Vec<String>,
}

impl Node {
    fn from_meta(res: &'static ResourceInfo, m: Meta) -> Node {
        Node {
            res,
            namespace: m.namespace,
            name: m.name,
            owners: m.owner_references,
            deleting: m.deletion_timestamp.is_some(),
            finalizers: m.finalizers,
        }
    }

    fn has_finalizer(&self, f: &str) -> bool {
        self.finalizers.iter().any(|x| x == f)
    }

    /// Deleting and waiting for its dependents (foreground propagation).
    fn deleting_dependents(&self) -> bool {
        self.deleting && self.has_finalizer(FOREGROUND)
    }

    /// Whether the collector has anything to do for this object itself.
    fn interesting(&self) -> bool {
        !self.owners.is_empty()
            || (self.deleting && (self.has_finalizer(FOREGROUND) || self.has_finalizer(ORPHAN)))
    }
}

/// uid → object, and owner uid → dependent uids.
#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, HashSet<String>>,
}

impl Graph {
    /// Insert or replace an object; returns the uids to process.
    fn upsert(&mut self, uid: &str, node: Node) -> Vec<String> {
        let mut out = Vec::new();
        if node.interesting() {
            out.push(uid.to_string());
        }
        let new_owners: HashSet<String> = node.owners.iter().map(|o| o.uid.clone()).collect();
        let old = self.nodes.insert(uid.to_string(), node);
        let old_owners: HashSet<String> = old
            .map(|o| o.owners.into_iter().map(|r| r.uid).collect())
            .unwrap_or_default();
        for gone in old_owners.difference(&new_owners) {
            self.unlink(gone, uid);
        }
        for added in new_owners.difference(&old_owners) {
            self.dependents
                .entry(added.clone())
                .or_default()
                .insert(uid.to_string());
        }
        // An owner waiting for its dependents re-checks on each of their changes.
        for o in old_owners.union(&new_owners) {
            if self.nodes.get(o).is_some_and(Node::deleting_dependents) {
                out.push(o.clone());
            }
        }
        out
    }

    /// Drop an object; returns the uids to process (its dependents and
    /// owners waiting for it).
    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .dependents
            .get(uid)
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(node) = self.nodes.remove(uid) {
            for o in node.owners {
                self.unlink(&o.uid, uid);
                if self
                    .nodes
                    .get(&o.uid)
                    .is_some_and(Node::deleting_dependents)
                {
                    out.push(o.uid);
                }
            }
        }
        out
    }

    fn unlink(&mut self, owner: &str, dependent: &str) {
        if let Some(set) = self.dependents.get_mut(owner) {
            set.remove(dependent);
            if set.is_empty() {
                self.dependents.remove(owner);
            }
        }
    }

    /// Replace every object of one resource (after a relist); returns uids to process.
    fn replace(&mut self, res: &'static ResourceInfo, items: Vec<(String, Node)>) -> Vec<String> {
        let keep: HashSet<&String> = items.iter().map(|(u, _)| u).collect();
        let stale: Vec<String> = self
            .nodes
            .iter()
            .filter(|(u, n)| std::ptr::eq(n.res, res) && !keep.contains(u))
            .map(|(u, _)| u.clone())
            .collect();
        let mut out = Vec::new();
        for u in stale {
            out.extend(self.remove(&u));
        }
        for (u, n) in items {
            out.extend(self.upsert(&u, n));
        }
        out
    }

    fn dependents_of(&self, uid: &str) -> Vec<(String, Node)> {
        self.dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| self.nodes.get(d).map(|n| (d.clone(), n.clone())))
            .collect()
    }
}

/// A work queue of uids in the style of client-go's: a key is never processed
/// by two workers at once, and one added while being processed runs again after.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<String>,
    dirty: HashSet<String>,
    processing: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    fn add(&self, k: String) {
        let mut s = self.state.lock().expect("queue lock");
        if !s.dirty.insert(k.clone()) || s.processing.contains(&k) {
            return;
        }
        s.ready.push_back(k);
        drop(s);
        self.notify.notify_one();
    }

    async fn get(&self) -> String {
        loop {
            {
                let mut s = self.state.lock().expect("queue lock");
                if let Some(k) = s.ready.pop_front() {
                    s.dirty.remove(&k);
                    s.processing.insert(k.clone());
                    let more = !s.ready.is_empty();
                    drop(s);
                    if more {
                        self.notify.notify_one();
                    }
                    return k;
                }
            }
            self.notify.notified().await;
        }
    }

    fn done(&self, k: &str, failed: bool) -> Option<Duration> {
        let mut s = self.state.lock().expect("queue lock");
        s.processing.remove(k);
        let retry = if failed {
            let n = s.failures.entry(k.to_string()).or_default();
            *n += 1;
            Some(
                (Duration::from_millis(5) * 2u32.saturating_pow((*n - 1).min(16)))
                    .min(Duration::from_secs(60)),
            )
        } else {
            s.failures.remove(k);
            None
        };
        if s.dirty.contains(k) {
            s.ready.push_back(k.to_string());
            drop(s);
            self.notify.notify_one();
        }
        retry
    }
}

struct Collector {
    client: LocalClient,
    graph: Mutex<Graph>,
    queue: Queue,
}

/// Run the garbage collector until its task is aborted.
pub async fn run(client: LocalClient) {
    let gc = Arc::new(Collector {
        client,
        graph: Mutex::new(Graph::default()),
        queue: Queue::default(),
    });
    let mut tasks = Vec::new();
    let mut synced = Vec::new();
    for res in resources::RESOURCES.iter().filter(|r| r.plural != "events") {
        let (tx, rx) = oneshot::channel();
        synced.push(rx);
        tasks.push(tokio::spawn(informer(gc.clone(), res, tx)));
    }
    // Informers and workers go when this task is aborted.
    let _guard = AbortOnDrop(tasks);
    // Act only on a complete graph, as Kubernetes waits for its caches.
    for rx in synced {
        let _ = rx.await;
    }
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let gc = gc.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let uid = gc.queue.get().await;
                let result = gc.attempt(&uid).await;
                if let Err(e) = &result {
                    tracing::debug!(uid, error = ?e.status()["message"], "garbage collector: will retry");
                }
                if let Some(d) = gc.queue.done(&uid, result.is_err()) {
                    let gc = gc.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        gc.queue.add(uid);
                    });
                }
            }
        }));
    }
    let _workers = AbortOnDrop(workers);
    std::future::pending::<()>().await;
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn informer(gc: Arc<Collector>, res: &'static ResourceInfo, synced: oneshot::Sender<()>) {
    let mut synced = Some(synced);
    loop {
        let (items, rev) = match gc.client.list(res, None, None) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(resource = res.plural, error = ?e.status()["message"], "garbage collector: list failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let nodes = items
            .into_iter()
            .filter_map(|o| serde_json::from_value::<Partial>(o).ok())
            .filter(|p| !p.metadata.uid.is_empty())
            .map(|p| (p.metadata.uid.clone(), Node::from_meta(res, p.metadata)))
            .collect();
        let todo = gc.graph.lock().expect("graph lock").replace(res, nodes);
        todo.into_iter().for_each(|u| gc.queue.add(u));
        if let Some(tx) = synced.take() {
            let _ = tx.send(());
        }
        let Ok(mut stream) = gc.client.watch(res, None, rev) else {
            continue;
        };
        while let Some(batch) = stream.next().await {
            let Ok(events) = batch else { break };
            let mut todo = Vec::new();
            let mut g = gc.graph.lock().expect("graph lock");
            for e in events {
                match e.kind {
                    EventKind::Put => {
                        let Some(p) = e
                            .value
                            .as_deref()
                            .and_then(|v| serde_json::from_slice::<Partial>(v).ok())
                        else {
                            continue;
                        };
                        if p.metadata.uid.is_empty() {
                            continue;
                        }
                        let uid = p.metadata.uid.clone();
                        // A replaced object (same key, new uid) removes the old one.
                        if let Some(old) = e
                            .prev
                            .as_deref()
                            .and_then(|v| serde_json::from_slice::<Partial>(v).ok())
                        {
                            if old.metadata.uid != uid {
                                todo.extend(g.remove(&old.metadata.uid));
                            }
                        }
                        todo.extend(g.upsert(&uid, Node::from_meta(res, p.metadata)));
                    }
                    _ => {
                        if let Some(old) = e
                            .prev
                            .as_deref()
                            .and_then(|v| serde_json::from_slice::<Partial>(v).ok())
                        {
                            todo.extend(g.remove(&old.metadata.uid));
                        }
                    }
                }
            }
            drop(g);
            todo.into_iter().for_each(|u| gc.queue.add(u));
        }
    }
}

/// How one owner reference stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// The owner exists.
    Solid,
    /// The owner exists and is being deleted in the foreground.
    Waiting,
    /// No object with that uid exists.
    Dangling,
}

/// The resource an ownerReference's apiVersion and kind name.
fn resolve(r: &OwnerRef) -> Option<&'static ResourceInfo> {
    let group = r.api_version.rsplit_once('/').map_or("", |(g, _)| g);
    resources::by_kind(group, &r.kind)
}

fn metadata_of(obj: &Value) -> Meta {
    obj.get("metadata")
        .cloned()
        .and_then(|m| serde_json::from_value(m).ok())
        .unwrap_or_default()
}

/// `obj` with every ownerReference whose uid is in `uids` removed.
fn without_owners(mut obj: Value, uids: &HashSet<&str>) -> Value {
    if let Some(refs) = obj
        .pointer_mut("/metadata/ownerReferences")
        .and_then(Value::as_array_mut)
    {
        refs.retain(|r| !r["uid"].as_str().is_some_and(|u| uids.contains(u)));
        if refs.is_empty() {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("ownerReferences");
            }
        }
    }
    obj
}

impl Collector {
    /// Process one uid: orphan or foreground-delete for a deleting owner, or
    /// delete (or detach from) a dependent whose owners are gone.
    async fn attempt(&self, uid: &str) -> Result<(), ApiError> {
        let Some(node) = self
            .graph
            .lock()
            .expect("graph lock")
            .nodes
            .get(uid)
            .cloned()
        else {
            return Ok(());
        };
        let Some(live) = self
            .client
            .get(node.res, node.namespace.as_deref(), &node.name)?
        else {
            return Ok(());
        };
        let meta = metadata_of(&live);
        if meta.uid != uid {
            return Ok(());
        }
        let node = Node::from_meta(node.res, meta);
        if node.deleting && node.has_finalizer(ORPHAN) {
            return self.orphan_dependents(uid, &node, live).await;
        }
        if node.deleting_dependents() {
            return self.delete_dependents(uid, &node, live).await;
        }
        if node.owners.is_empty() || node.deleting {
            return Ok(());
        }
        let mut solid = false;
        let mut waiting = false;
        let mut detach: HashSet<&str> = HashSet::new();
        for r in &node.owners {
            match self.owner_state(r, node.namespace.as_deref())? {
                OwnerState::Solid => solid = true,
                OwnerState::Waiting => {
                    waiting = true;
                    detach.insert(&r.uid);
                }
                OwnerState::Dangling => {
                    detach.insert(&r.uid);
                }
            }
        }
        if detach.is_empty() {
            return Ok(());
        }
        if solid {
            // Another owner still holds it: only drop the references to the gone ones.
            let updated = without_owners(live, &detach);
            self.client.update(node.res, updated).await?;
            return Ok(());
        }
        let has_dependents = self
            .graph
            .lock()
            .expect("graph lock")
            .dependents
            .get(uid)
            .is_some_and(|d| !d.is_empty());
        // A dependent of a foreground deletion that has dependents itself is
        // deleted in the foreground too, so the whole chain is waited for.
        let policy = if waiting && has_dependents {
            "Foreground"
        } else {
            "Background"
        };
        let rv = live.pointer("/metadata/resourceVersion").cloned();
        let opts = json!({"propagationPolicy": policy, "preconditions": {"uid": uid, "resourceVersion": rv}});
        tracing::debug!(
            kind = node.res.kind,
            name = node.name,
            policy,
            "garbage collector: deleting dependent"
        );
        self.client
            .delete(node.res, node.namespace.as_deref(), &node.name, &opts)
            .await?;
        Ok(())
    }

    fn owner_state(&self, r: &OwnerRef, ns: Option<&str>) -> Result<OwnerState, ApiError> {
        if let Some(o) = self.graph.lock().expect("graph lock").nodes.get(&r.uid) {
            if o.name == r.name && o.res.kind == r.kind {
                return Ok(if o.deleting_dependents() {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                });
            }
        }
        // Not in the graph (yet): ask the store, as Kubernetes asks the API server.
        let Some(res) = resolve(r) else {
            // A kind we do not serve cannot be checked; never delete on a guess.
            return Ok(OwnerState::Solid);
        };
        let ns = if res.namespaced { ns } else { None };
        if res.namespaced && ns.is_none() {
            // A cluster-scoped object cannot be owned by a namespaced one.
            return Ok(OwnerState::Dangling);
        }
        match self.client.get(res, ns, &r.name)? {
            Some(o) => {
                let m = metadata_of(&o);
                if m.uid != r.uid {
                    return Ok(OwnerState::Dangling);
                }
                let n = Node::from_meta(res, m);
                Ok(if n.deleting_dependents() {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                })
            }
            None => Ok(OwnerState::Dangling),
        }
    }

    /// Orphan propagation: strip references to the owner, then drop `orphan`.
    async fn orphan_dependents(
        &self,
        uid: &str,
        owner: &Node,
        live: Value,
    ) -> Result<(), ApiError> {
        let deps = self.graph.lock().expect("graph lock").dependents_of(uid);
        let only: HashSet<&str> = [uid].into_iter().collect();
        for (dep_uid, dep) in deps {
            let Some(obj) = self
                .client
                .get(dep.res, dep.namespace.as_deref(), &dep.name)?
            else {
                continue;
            };
            if obj.pointer("/metadata/uid").and_then(Value::as_str) != Some(dep_uid.as_str()) {
                continue;
            }
            let updated = without_owners(obj.clone(), &only);
            if updated != obj {
                self.client.update(dep.res, updated).await?;
            }
        }
        self.remove_finalizer(owner, live, ORPHAN).await
    }

    /// Foreground propagation: delete every dependent; once none that blocks
    /// owner deletion is left, drop `foregroundDeletion` so the owner goes.
    async fn delete_dependents(
        &self,
        uid: &str,
        owner: &Node,
        live: Value,
    ) -> Result<(), ApiError> {
        let deps = self.graph.lock().expect("graph lock").dependents_of(uid);
        let blocking = deps.iter().any(|(_, d)| {
            d.owners
                .iter()
                .any(|r| r.uid == uid && r.block_owner_deletion == Some(true))
        });
        if !blocking {
            return self.remove_finalizer(owner, live, FOREGROUND).await;
        }
        for (dep_uid, dep) in deps {
            if !dep.deleting {
                self.queue.add(dep_uid);
            }
        }
        Ok(())
    }

    async fn remove_finalizer(
        &self,
        node: &Node,
        mut live: Value,
        f: &str,
    ) -> Result<(), ApiError> {
        if let Some(list) = live
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        {
            list.retain(|x| x != f);
        }
        tracing::debug!(
            kind = node.res.kind,
            name = node.name,
            finalizer = f,
            "garbage collector: removing finalizer"
        );
        self.client.update(node.res, live).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> &'static ResourceInfo {
        resources::lookup("", "v1", "pods").unwrap()
    }

    fn node(owners: &[(&str, bool)], deleting: bool, finalizers: &[&str]) -> Node {
        Node {
            res: pods(),
            namespace: Some("d".into()),
            name: "n".into(),
            owners: owners
                .iter()
                .map(|(u, b)| OwnerRef {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: format!("rs-{u}"),
                    uid: u.to_string(),
                    block_owner_deletion: Some(*b),
                })
                .collect(),
            deleting,
            finalizers: finalizers.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn graph_indexes_dependents_and_enqueues() {
        let mut g = Graph::default();
        assert_eq!(
            g.upsert("owner", node(&[], false, &[])),
            Vec::<String>::new()
        );
        assert_eq!(
            g.upsert("a", node(&[("owner", true)], false, &[])),
            vec!["a".to_string()]
        );
        g.upsert("b", node(&[("owner", false)], false, &[]));
        assert_eq!(g.dependents_of("owner").len(), 2);
        // The owner starts a foreground deletion: it is processed, and each
        // dependent change re-enqueues it.
        assert_eq!(
            g.upsert("owner", node(&[], true, &[FOREGROUND])),
            vec!["owner".to_string()]
        );
        let todo = g.upsert("a", node(&[("owner", true)], true, &[]));
        assert!(todo.contains(&"owner".to_string()));
        let todo = g.remove("a");
        assert_eq!(todo, vec!["owner".to_string()]);
        // Dropping a reference unlinks it.
        g.upsert("b", node(&[], false, &[]));
        assert!(g.dependents_of("owner").is_empty());
        assert!(!g.dependents.contains_key("owner"));
    }

    #[test]
    fn removing_an_owner_enqueues_its_dependents() {
        let mut g = Graph::default();
        g.upsert("o", node(&[], false, &[]));
        g.upsert("d1", node(&[("o", true)], false, &[]));
        g.upsert("d2", node(&[("o", true)], false, &[]));
        let mut todo = g.remove("o");
        todo.sort();
        assert_eq!(todo, vec!["d1".to_string(), "d2".to_string()]);
    }

    #[test]
    fn relist_drops_missing_objects() {
        let mut g = Graph::default();
        g.upsert("o", node(&[], false, &[]));
        g.upsert("d", node(&[("o", true)], false, &[]));
        let todo = g.replace(pods(), vec![("d".into(), node(&[("o", true)], false, &[]))]);
        assert!(!g.nodes.contains_key("o"));
        assert!(todo.contains(&"d".to_string()));
    }

    #[test]
    fn strips_only_named_owner_references() {
        let obj =
            json!({"metadata": {"name": "p", "ownerReferences": [{"uid": "1"}, {"uid": "2"}]}});
        let one: HashSet<&str> = ["1"].into_iter().collect();
        let out = without_owners(obj, &one);
        assert_eq!(out["metadata"]["ownerReferences"], json!([{"uid": "2"}]));
        let two: HashSet<&str> = ["2"].into_iter().collect();
        let out = without_owners(out, &two);
        assert!(out["metadata"].get("ownerReferences").is_none());
    }

    #[test]
    fn resolves_owner_kinds() {
        let r = |api: &str, kind: &str| OwnerRef {
            api_version: api.into(),
            kind: kind.into(),
            name: "x".into(),
            uid: "u".into(),
            block_owner_deletion: None,
        };
        assert_eq!(
            resolve(&r("apps/v1", "ReplicaSet")).unwrap().plural,
            "replicasets"
        );
        assert_eq!(resolve(&r("v1", "Node")).unwrap().plural, "nodes");
        assert!(resolve(&r("example.com/v1", "Widget")).is_none());
    }

    #[tokio::test]
    async fn queue_never_hands_out_a_key_twice_at_once() {
        let q = Queue::default();
        q.add("a".into());
        q.add("a".into());
        assert_eq!(q.get().await, "a");
        // Added again while processing: held back until done.
        q.add("a".into());
        assert!(q.state.lock().unwrap().ready.is_empty());
        assert_eq!(q.done("a", false), None);
        assert_eq!(q.get().await, "a");
        assert_eq!(q.done("a", true), Some(Duration::from_millis(5)));
        assert_eq!(q.done("a", true), Some(Duration::from_millis(10)));
    }
}
