//! The scheduler: Kubernetes' framework shape with Wasm policies.
//!
//! It runs on its own thread (policy calls are synchronous and bounded by the
//! plugin runtime), reacts to pods and nodes through list+watch, and for each
//! pending pod: filter (the `default` policy's filters plus the profile's
//! policies) → score (the profile's policies, weighted) → pick the best →
//! reserve (the pod is counted in every policy's view at once) → bind through
//! the binding subresource. A pod that fits nowhere gets `PodScheduled=False`
//! with the reasons and an Event, and waits until the cluster changes.

pub mod policy;
pub mod queue;
pub mod volumes;

use crate::api::handlers::{self, Target};
use crate::api::{object, resources, AppState};
use crate::plugin::bindings::ObjectEvent;
use crate::plugin::{artifacts, PluginError};
use crate::plugin_objects::{self, PluginEntry, PluginSet, DEFAULT_POLICY, DEFAULT_PROFILE};
use crate::store::{Event, EventKind};
use futures::StreamExt;
use policy::{NativePolicy, Policy, WasmPolicy};
use queue::Queue;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Scheduler options.
#[derive(Debug, Clone, Default)]
pub struct SchedulerConfig {
    /// Run the built-in policies compiled natively instead of as Wasm
    /// (for the native-vs-Wasm benchmark only).
    pub native_builtins: bool,
}

/// Inputs to the scheduler thread.
enum Input {
    /// A fresh list: all nodes and pods (raw JSON) at one revision.
    Reset {
        nodes: Vec<bytes::Bytes>,
        pods: Vec<bytes::Bytes>,
    },
    /// Node changes.
    Nodes(Vec<Event>),
    /// Pod changes.
    Pods(Vec<Event>),
    /// A new plugin set.
    Plugins(Arc<PluginSet>),
    /// A bind finished.
    Bound(String, BindOutcome),
    /// Claims, volumes or classes changed (pods waiting on them may fit now).
    Volumes,
}

/// Start the scheduler. Policy calls are synchronous, so the scheduling loop
/// runs on its own OS thread outside any async runtime; an informer task on
/// the server's runtime feeds it list+watch events through a channel, and
/// binds and status writes go back to that runtime.
pub fn spawn(
    state: Arc<AppState>,
    plugins: watch::Receiver<Arc<PluginSet>>,
    config: SchedulerConfig,
    stop: Arc<tokio::sync::Notify>,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let rt = tokio::runtime::Handle::current();
    let informer = rt.spawn(informer(state.clone(), tx.clone(), plugins));
    let volume_informer = rt.spawn(volume_informer(state.clone(), tx.clone()));
    rt.spawn(async move {
        stop.notified().await;
        informer.abort();
        volume_informer.abort();
    });
    std::thread::Builder::new()
        .name("scheduler".into())
        .spawn(move || {
            let mut s = Scheduler::new(state, config, rt, tx);
            s.run(rx);
        })
        .expect("spawn scheduler thread");
}

/// List, then watch from the list's revision (an informer), forwarding to the
/// scheduler thread; relists when a watch ends.
async fn informer(
    state: Arc<AppState>,
    tx: std::sync::mpsc::Sender<Input>,
    mut plugins: watch::Receiver<Arc<PluginSet>>,
) {
    let pods_info = resources::lookup("", "v1", "pods").expect("pods");
    let nodes_info = resources::lookup("", "v1", "nodes").expect("nodes");
    if tx
        .send(Input::Plugins(plugins.borrow_and_update().clone()))
        .is_err()
    {
        return;
    }
    loop {
        let lists = state
            .store
            .list(&nodes_info.prefix(None), None, 0, None)
            .and_then(|nl| {
                let pl = state
                    .store
                    .list(&pods_info.prefix(None), None, 0, Some(nl.revision))?;
                Ok((nl, pl))
            });
        let Ok((nl, pl)) = lists else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let rev = nl.revision;
        let (Ok(mut node_w), Ok(mut pod_w)) = (
            state.store.watch(&nodes_info.prefix(None), rev),
            state.store.watch(&pods_info.prefix(None), rev),
        ) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let reset = Input::Reset {
            nodes: nl.items.into_iter().map(|kv| kv.value).collect(),
            pods: pl.items.into_iter().map(|kv| kv.value).collect(),
        };
        if tx.send(reset).is_err() {
            return;
        }
        loop {
            let input = tokio::select! {
                ev = node_w.next() => match ev {
                    Some(Ok(evs)) => Input::Nodes(evs),
                    _ => break,
                },
                ev = pod_w.next() => match ev {
                    Some(Ok(evs)) => Input::Pods(evs),
                    _ => break,
                },
                r = plugins.changed() => match r {
                    Ok(()) => Input::Plugins(plugins.borrow_and_update().clone()),
                    Err(_) => return,
                },
            };
            if tx.send(input).is_err() {
                return;
            }
        }
        tracing::warn!("scheduler: watch ended; relisting");
    }
}

/// Watch claims, volumes and classes; any change is one `Input::Volumes`.
async fn volume_informer(state: Arc<AppState>, tx: std::sync::mpsc::Sender<Input>) {
    let kinds = [
        resources::lookup("", "v1", "persistentvolumeclaims").expect("claims"),
        resources::lookup("", "v1", "persistentvolumes").expect("volumes"),
        resources::lookup("storage.k8s.io", "v1", "storageclasses").expect("classes"),
    ];
    loop {
        let rev = state.store.current_revision();
        let watches: Result<Vec<_>, _> = kinds
            .iter()
            .map(|k| state.store.watch(&k.prefix(None), rev))
            .collect();
        let Ok(watches) = watches else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut all = futures::stream::select_all(watches);
        while let Some(Ok(_)) = all.next().await {
            if tx.send(Input::Volumes).is_err() {
                return;
            }
        }
    }
}

struct Slot {
    entry: PluginEntry,
    policy: Box<dyn Policy>,
    wants_nodes: bool,
    wants_pods: bool,
}

struct PendingPod {
    json: String,
    profile: String,
    namespace: String,
    name: String,
}

struct ViewPod {
    handle: u32,
    node: String,
    json: String,
}

enum BindOutcome {
    Bound,
    Gone,
    Retry(String),
}

struct Scheduler {
    state: Arc<AppState>,
    rt: tokio::runtime::Handle,
    inputs: std::sync::mpsc::Sender<Input>,
    plugin_set: Arc<PluginSet>,
    config: SchedulerConfig,
    policies: BTreeMap<String, Slot>,
    queue: Queue,
    pending: HashMap<String, PendingPod>,
    nodes: BTreeMap<String, (u32, String)>,
    node_names: HashMap<u32, String>,
    order: Vec<u32>,
    next_handle: u32,
    view_pods: HashMap<String, ViewPod>,
    assumed: HashMap<String, String>,
    outbox: Vec<ObjectEvent>,
    offset: usize,
    builtin_default: String,
    builtin_binpack: String,
}

fn pod_key(ns: &str, name: &str) -> String {
    format!("{ns}/{name}")
}

/// What the scheduler thread reads of a pod event. Deserialized into typed
/// fields, skipping the rest of the object unparsed: a full `Value` of every
/// pod event (create, bind, status) was a visible share of the thread's CPU.
#[derive(Debug, PartialEq)]
struct PodHead {
    namespace: String,
    name: String,
    /// `spec.nodeName`, when set and not empty.
    node_name: Option<String>,
    /// `spec.schedulerName`, or the default profile.
    scheduler_name: String,
    /// `spec.priority` (0 when unset or not an integer).
    priority: i32,
    /// `metadata.deletionTimestamp` is set (not null).
    deleting: bool,
    /// `status.phase` is Succeeded or Failed.
    terminal: bool,
}

impl PodHead {
    /// The head of a pod's JSON; `None` when it is not a JSON object.
    fn parse(raw: &[u8]) -> Option<PodHead> {
        use serde::Deserialize;
        use std::borrow::Cow;

        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Meta<'a> {
            #[serde(borrow)]
            name: Option<Cow<'a, str>>,
            #[serde(borrow)]
            namespace: Option<Cow<'a, str>>,
            deletion_timestamp: Option<serde::de::IgnoredAny>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default, rename_all = "camelCase")]
        struct Spec<'a> {
            #[serde(borrow)]
            node_name: Option<Cow<'a, str>>,
            #[serde(borrow)]
            scheduler_name: Option<Cow<'a, str>>,
            priority: Option<serde_json::Number>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Status<'a> {
            #[serde(borrow)]
            phase: Option<Cow<'a, str>>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Pod<'a> {
            #[serde(borrow)]
            metadata: Option<Meta<'a>>,
            #[serde(borrow)]
            spec: Option<Spec<'a>>,
            #[serde(borrow)]
            status: Option<Status<'a>>,
        }

        let pod = match serde_json::from_slice::<Pod>(raw) {
            Ok(pod) => pod,
            // A field of an unexpected type: read it the general way.
            Err(_) => return Self::parse_value(&serde_json::from_slice(raw).ok()?),
        };
        let meta = pod.metadata.unwrap_or_default();
        let spec = pod.spec.unwrap_or_default();
        let phase = pod.status.unwrap_or_default().phase;
        Some(PodHead {
            namespace: meta.namespace.unwrap_or_default().into_owned(),
            name: meta.name.unwrap_or_default().into_owned(),
            node_name: spec
                .node_name
                .filter(|n| !n.is_empty())
                .map(Cow::into_owned),
            scheduler_name: spec
                .scheduler_name
                .map_or_else(|| DEFAULT_PROFILE.to_string(), Cow::into_owned),
            priority: spec.priority.and_then(|p| p.as_i64()).unwrap_or(0) as i32,
            deleting: meta.deletion_timestamp.is_some(),
            terminal: matches!(phase.as_deref(), Some("Succeeded") | Some("Failed")),
        })
    }

    /// The same from a parsed value (anything that is not an object: `None`).
    fn parse_value(v: &Value) -> Option<PodHead> {
        v.as_object()?;
        let s = |ptr: &str| v.pointer(ptr).and_then(Value::as_str);
        Some(PodHead {
            namespace: s("/metadata/namespace").unwrap_or("").to_string(),
            name: s("/metadata/name").unwrap_or("").to_string(),
            node_name: s("/spec/nodeName")
                .filter(|n| !n.is_empty())
                .map(str::to_string),
            scheduler_name: s("/spec/schedulerName")
                .unwrap_or(DEFAULT_PROFILE)
                .to_string(),
            priority: v
                .pointer("/spec/priority")
                .and_then(Value::as_i64)
                .unwrap_or(0) as i32,
            deleting: v
                .pointer("/metadata/deletionTimestamp")
                .is_some_and(|t| !t.is_null()),
            terminal: matches!(s("/status/phase"), Some("Succeeded") | Some("Failed")),
        })
    }
}

/// `pod_json` with `spec.nodeName` set to `node`, by inserting the field at
/// the start of the top-level `spec` object instead of parsing and
/// re-serializing the whole pod. `None` (the caller falls back to a full
/// parse) when the pod has no `spec` object or already mentions `nodeName`
/// anywhere, so the result never carries a duplicate key.
fn with_node_name(pod_json: &str, node: &str) -> Option<String> {
    if pod_json.contains("\"nodeName\"") {
        return None;
    }
    let at = top_level_object_value(pod_json, "spec")? + 1;
    let field = format!("{}:{},", json!("nodeName"), json!(node));
    let rest = &pod_json[at..];
    let field = if rest.trim_start().starts_with('}') {
        &field[..field.len() - 1]
    } else {
        &field[..]
    };
    let mut out = String::with_capacity(pod_json.len() + field.len());
    out.push_str(&pod_json[..at]);
    out.push_str(field);
    out.push_str(rest);
    Some(out)
}

/// Byte offset of the `{` that opens the value of top-level key `key`, if
/// that value is an object. A small scanner over JSON text (strings, escapes
/// and nesting), enough to find one key without building a tree.
fn top_level_object_value(json: &str, key: &str) -> Option<usize> {
    let b = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    // The last string seen at depth 1 and whether it was in key position.
    let mut expect_key = false;
    let mut last_key: Option<(usize, usize)> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                if depth == 1 && expect_key {
                    last_key = Some((start, i));
                    expect_key = false;
                }
            }
            b'{' | b'[' => {
                if depth == 1 && b[i] == b'{' {
                    if let Some((s, e)) = last_key {
                        if json.get(s..e) == Some(key) {
                            return Some(i);
                        }
                    }
                }
                depth += 1;
                if depth == 1 {
                    expect_key = true;
                }
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            b',' if depth == 1 => {
                expect_key = true;
                last_key = None;
            }
            b':' if depth == 1 => {}
            _ => {}
        }
        i += 1;
    }
    None
}

impl Scheduler {
    fn new(
        state: Arc<AppState>,
        config: SchedulerConfig,
        rt: tokio::runtime::Handle,
        inputs: std::sync::mpsc::Sender<Input>,
    ) -> Scheduler {
        Scheduler {
            state,
            rt,
            inputs,
            plugin_set: Arc::new(PluginSet::new()),
            config,
            policies: BTreeMap::new(),
            queue: Queue::default(),
            pending: HashMap::new(),
            nodes: BTreeMap::new(),
            node_names: HashMap::new(),
            order: Vec::new(),
            next_handle: 1,
            view_pods: HashMap::new(),
            assumed: HashMap::new(),
            outbox: Vec::new(),
            offset: 0,
            builtin_default: crate::blobs::digest_of(artifacts::DEFAULT_SCHEDULER),
            builtin_binpack: crate::blobs::digest_of(artifacts::BINPACK),
        }
    }

    fn run(&mut self, rx: std::sync::mpsc::Receiver<Input>) {
        use std::sync::mpsc::{RecvTimeoutError, TryRecvError};
        loop {
            // Take in everything already waiting before the next attempt.
            loop {
                match rx.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            let next_backoff = self.queue.flush_backoff(Instant::now());
            if let Some(key) = self.queue.pop() {
                self.schedule_one(&key);
                continue;
            }
            let wait = next_backoff
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            match rx.recv_timeout(wait) {
                Ok(input) => self.handle(input),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Reset { nodes, pods } => {
                self.reset();
                for n in &nodes {
                    self.on_node(EventKind::Put, Some(n), None);
                }
                for p in &pods {
                    self.on_pod(EventKind::Put, Some(p), None);
                }
                self.sync_plugins();
            }
            Input::Nodes(evs) => self.apply(&evs, true),
            Input::Pods(evs) => self.apply(&evs, false),
            Input::Plugins(set) => {
                self.plugin_set = set;
                self.sync_plugins();
            }
            Input::Bound(key, outcome) => self.on_bound(&key, outcome),
            Input::Volumes => self.queue.cluster_changed(Instant::now()),
        }
    }

    fn reset(&mut self) {
        self.queue = Queue::default();
        self.pending.clear();
        self.nodes.clear();
        self.node_names.clear();
        self.order.clear();
        self.view_pods.clear();
        self.assumed.clear();
        self.outbox.clear();
        // Views are rebuilt from scratch: re-instantiate every policy.
        self.policies.clear();
    }

    fn apply(&mut self, events: &[Event], nodes: bool) {
        for e in events {
            if nodes {
                self.on_node(e.kind, e.value.as_deref(), e.prev.as_deref());
            } else {
                self.on_pod(e.kind, e.value.as_deref(), e.prev.as_deref());
            }
        }
    }

    fn on_node(&mut self, kind: EventKind, value: Option<&[u8]>, prev: Option<&[u8]>) {
        let raw = match kind {
            EventKind::Put => value,
            EventKind::Delete => prev,
        };
        let Some(raw) = raw else { return };
        let Ok(v) = serde_json::from_slice::<Value>(raw) else {
            return;
        };
        let Some(name) = object::meta_str(&v, "name").map(str::to_string) else {
            return;
        };
        let json = String::from_utf8_lossy(raw).into_owned();
        match kind {
            EventKind::Put => {
                let handle = match self.nodes.get(&name) {
                    Some((h, _)) => *h,
                    None => {
                        let h = self.next_handle;
                        self.next_handle += 1;
                        self.order.push(h);
                        self.node_names.insert(h, name.clone());
                        h
                    }
                };
                self.nodes.insert(name, (handle, json.clone()));
                self.outbox.push(ObjectEvent {
                    kind: "Node".into(),
                    handle,
                    deleted: false,
                    object: json,
                });
            }
            EventKind::Delete => {
                if let Some((h, _)) = self.nodes.remove(&name) {
                    self.order.retain(|x| *x != h);
                    self.node_names.remove(&h);
                    self.outbox.push(ObjectEvent {
                        kind: "Node".into(),
                        handle: h,
                        deleted: true,
                        object: json,
                    });
                }
            }
        }
        self.queue.cluster_changed(Instant::now());
    }

    fn on_pod(&mut self, kind: EventKind, value: Option<&[u8]>, prev: Option<&[u8]>) {
        let raw = match kind {
            EventKind::Put => value,
            EventKind::Delete => prev,
        };
        let Some(raw) = raw else { return };
        let Some(head) = PodHead::parse(raw) else {
            return;
        };
        let key = pod_key(&head.namespace, &head.name);
        let gone = kind == EventKind::Delete || head.terminal;
        if gone {
            self.pending.remove(&key);
            self.queue.remove(&key);
            self.assumed.remove(&key);
            self.forget_view_pod(&key, raw);
            self.queue.cluster_changed(Instant::now());
            return;
        }
        match head.node_name {
            Some(node) => {
                // Bound: it leaves the queue and (re)enters the views as bound there.
                self.pending.remove(&key);
                self.queue.remove(&key);
                self.assumed.remove(&key);
                let same = self.view_pods.get(&key).is_some_and(|p| p.node == node);
                if !same {
                    let json = String::from_utf8_lossy(raw).into_owned();
                    self.put_view_pod(&key, node, json);
                }
            }
            None => {
                if self.assumed.contains_key(&key) {
                    // Our bind has not landed yet; this is an older state.
                    return;
                }
                if head.deleting {
                    return;
                }
                self.pending.insert(
                    key.clone(),
                    PendingPod {
                        json: String::from_utf8_lossy(raw).into_owned(),
                        profile: head.scheduler_name,
                        namespace: head.namespace,
                        name: head.name,
                    },
                );
                self.queue.add(&key, head.priority);
            }
        }
    }

    fn put_view_pod(&mut self, key: &str, node: String, json: String) {
        let handle = match self.view_pods.get(key) {
            Some(p) => p.handle,
            None => {
                let h = self.next_handle;
                self.next_handle += 1;
                h
            }
        };
        self.outbox.push(ObjectEvent {
            kind: "Pod".into(),
            handle,
            deleted: false,
            object: json.clone(),
        });
        self.view_pods
            .insert(key.to_string(), ViewPod { handle, node, json });
    }

    fn forget_view_pod(&mut self, key: &str, raw: &[u8]) {
        if let Some(p) = self.view_pods.remove(key) {
            let object = if raw.is_empty() {
                p.json
            } else {
                String::from_utf8_lossy(raw).into_owned()
            };
            self.outbox.push(ObjectEvent {
                kind: "Pod".into(),
                handle: p.handle,
                deleted: true,
                object,
            });
        }
    }

    /// Deliver queued view changes to every policy that wants them.
    fn flush_view(&mut self) {
        if self.outbox.is_empty() {
            return;
        }
        let events = std::mem::take(&mut self.outbox);
        let mut failed = Vec::new();
        for (name, slot) in self.policies.iter_mut() {
            let mine: Vec<ObjectEvent> = events
                .iter()
                .filter(|e| {
                    (e.kind == "Node" && slot.wants_nodes) || (e.kind == "Pod" && slot.wants_pods)
                })
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            if let Err(e) = slot.policy.observe(&mine) {
                failed.push((name.clone(), e));
            }
        }
        for (name, e) in failed {
            self.fail_policy(&name, e);
        }
    }

    /// Bring the policy instances in line with the published plugin set.
    fn sync_plugins(&mut self) {
        let set = self.plugin_set.clone();
        let mut next = BTreeMap::new();
        for (name, entry) in set
            .iter()
            .filter(|(_, e)| e.kind == crate::plugin::PluginKind::Scheduler)
        {
            if let Some(slot) = self.policies.remove(name) {
                if slot.entry.generation == entry.generation && slot.entry.digest == entry.digest {
                    next.insert(name.clone(), slot);
                    continue;
                }
            }
            match self.instantiate(entry) {
                Ok(slot) => {
                    next.insert(name.clone(), slot);
                }
                Err(e) => self.report_failure(entry, &e),
            }
        }
        self.policies = next;
        self.queue.retry_all_now();
    }

    fn instantiate(&self, entry: &PluginEntry) -> Result<Slot, PluginError> {
        let mut policy: Box<dyn Policy> =
            if self.config.native_builtins && entry.digest == self.builtin_default {
                Box::new(NativePolicy::new(false, &entry.config)?)
            } else if self.config.native_builtins && entry.digest == self.builtin_binpack {
                Box::new(NativePolicy::new(true, &entry.config)?)
            } else {
                Box::new(WasmPolicy::new(&entry.loaded, &entry.config)?)
            };
        let interests = policy.interests()?;
        let wants_nodes = interests.iter().any(|k| k == "Node");
        let wants_pods = interests.iter().any(|k| k == "Pod");
        // Replay the current view (plus changes not yet flushed to others).
        let mut events = Vec::new();
        if wants_nodes {
            for (h, json) in self.nodes.values() {
                events.push(ObjectEvent {
                    kind: "Node".into(),
                    handle: *h,
                    deleted: false,
                    object: json.clone(),
                });
            }
        }
        if wants_pods {
            for p in self.view_pods.values() {
                events.push(ObjectEvent {
                    kind: "Pod".into(),
                    handle: p.handle,
                    deleted: false,
                    object: p.json.clone(),
                });
            }
        }
        if !events.is_empty() {
            policy.observe(&events)?;
        }
        Ok(Slot {
            entry: entry.clone(),
            policy,
            wants_nodes,
            wants_pods,
        })
    }

    fn report_failure(&self, entry: &PluginEntry, e: &PluginError) {
        tracing::warn!(plugin = %entry.name, error = %e, "scheduler policy failed; continuing without it");
        let state = self.state.clone();
        let (name, reason, generation) = (entry.name.clone(), e.to_string(), entry.generation);
        self.rt.spawn(async move {
            let _ = plugin_objects::set_status(&state, &name, "Failed", &reason, Some(generation))
                .await;
        });
    }

    fn fail_policy(&mut self, name: &str, e: PluginError) {
        if let Some(slot) = self.policies.remove(name) {
            self.report_failure(&slot.entry, &e);
        }
    }

    /// How many feasible nodes to look for (Kubernetes' adaptive percentage).
    fn feasible_target(n: usize) -> usize {
        if n < 100 {
            return n;
        }
        let pct = (50i64 - n as i64 / 125).max(5) as usize;
        (n * pct / 100).max(100)
    }

    fn schedule_one(&mut self, key: &str) {
        let Some(pod) = self.pending.get(key) else {
            return;
        };
        let (pod_json, profile, ns, name) = (
            pod.json.clone(),
            pod.profile.clone(),
            pod.namespace.clone(),
            pod.name.clone(),
        );
        // Built-in volume step: claims that no node can satisfy now.
        let gathered = if pod_json.contains("\"persistentVolumeClaim\"") {
            let volume_client = crate::api::client::LocalClient::new(self.state.clone());
            let pod_value: Value = serde_json::from_str(&pod_json).unwrap_or(Value::Null);
            volumes::VolumeCheck::gather(&volume_client, &ns, &pod_value)
        } else {
            Ok(volumes::VolumeCheck::default())
        };
        let volume_check = match gathered {
            Ok(v) => v,
            Err(why) => {
                let msg = format!("0/{} nodes are available: {why}.", self.order.len());
                self.queue.unschedulable(key);
                self.mark_unschedulable(&ns, &name, msg);
                return;
            }
        };
        self.flush_view();
        let scorers: Vec<String> = self
            .policies
            .iter()
            .filter(|(_, s)| s.entry.profiles.contains(&profile))
            .map(|(n, _)| n.clone())
            .collect();
        if scorers.is_empty() {
            // Not a profile we serve (yet): wait for a plugin set change.
            self.queue.unschedulable(key);
            return;
        }
        let mut filterers: Vec<String> = Vec::new();
        if self.policies.contains_key(DEFAULT_POLICY) {
            filterers.push(DEFAULT_POLICY.into());
        }
        filterers.extend(
            scorers
                .iter()
                .filter(|s| s.as_str() != DEFAULT_POLICY)
                .cloned(),
        );

        // Filter: walk nodes from a rotating offset until enough are feasible.
        let total = self.order.len();
        let want = Self::feasible_target(total);
        let mut feasible: Vec<u32> = Vec::new();
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen = 0;
        let start = if total == 0 { 0 } else { self.offset % total };
        while seen < total && feasible.len() < want {
            let chunk_len = (want - feasible.len()).max(16).min(total - seen);
            let chunk: Vec<u32> = (0..chunk_len)
                .map(|i| self.order[(start + seen + i) % total])
                .collect();
            seen += chunk_len;
            let mut alive = chunk;
            for f in &filterers {
                if alive.is_empty() {
                    break;
                }
                let Some(slot) = self.policies.get_mut(f) else {
                    continue;
                };
                match slot.policy.filter(&pod_json, &alive) {
                    Ok(rejected) => {
                        if rejected.is_empty() {
                            continue;
                        }
                        let mut out: HashMap<u32, String> = rejected.into_iter().collect();
                        alive.retain(|h| match out.remove(h) {
                            Some(reason) => {
                                *reasons.entry(reason).or_default() += 1;
                                false
                            }
                            None => true,
                        });
                    }
                    Err(e) => {
                        let name = f.clone();
                        self.fail_policy(&name, e);
                    }
                }
            }
            if !volume_check.is_empty() {
                alive.retain(|h| {
                    let node = self
                        .node_names
                        .get(h)
                        .and_then(|n| self.nodes.get(n))
                        .and_then(|(_, j)| serde_json::from_str::<Value>(j).ok())
                        .unwrap_or(Value::Null);
                    match volume_check.node_ok(&node) {
                        Ok(()) => true,
                        Err(reason) => {
                            *reasons.entry(reason.to_string()).or_default() += 1;
                            false
                        }
                    }
                });
            }
            feasible.extend(alive);
        }
        if total > 0 {
            self.offset = (start + seen) % total;
        }
        if feasible.is_empty() {
            let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            parts.sort();
            let msg = if total == 0 {
                "0/0 nodes are available: no nodes registered.".to_string()
            } else {
                format!("0/{total} nodes are available: {}.", parts.join(", "))
            };
            self.queue.unschedulable(key);
            self.mark_unschedulable(&ns, &name, msg);
            return;
        }

        // Score: weighted sum over the profile's policies.
        let mut totals = vec![0u64; feasible.len()];
        for s in &scorers {
            let Some(slot) = self.policies.get_mut(s) else {
                continue;
            };
            let weight = slot.entry.weight as u64;
            match slot.policy.score(&pod_json, &feasible) {
                Ok(scores) if scores.len() == feasible.len() => {
                    for (t, sc) in totals.iter_mut().zip(scores) {
                        *t += weight * sc.min(100) as u64;
                    }
                }
                Ok(scores) if scores.is_empty() => {}
                Ok(scores) => {
                    let e = PluginError::Runtime(format!(
                        "score returned {} values for {} nodes",
                        scores.len(),
                        feasible.len()
                    ));
                    let name = s.clone();
                    self.fail_policy(&name, e);
                }
                Err(e) => {
                    let name = s.clone();
                    self.fail_policy(&name, e);
                }
            }
        }
        let best = *totals.iter().max().expect("feasible is not empty");
        let ties: Vec<usize> = totals
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == best)
            .map(|(i, _)| i)
            .collect();
        let pick = ties[rand::random_range(0..ties.len())];
        let handle = feasible[pick];
        let Some(node) = self.node_names.get(&handle).cloned() else {
            self.queue.retry_later(key, Instant::now());
            return;
        };

        // Reserve: count the pod on the node in every view before binding.
        let assumed = with_node_name(&pod_json, &node).unwrap_or_else(|| {
            let mut v: Value = serde_json::from_str(&pod_json).unwrap_or(json!({}));
            v["spec"]["nodeName"] = json!(node);
            v.to_string()
        });
        self.put_view_pod(key, node.clone(), assumed);
        self.assumed.insert(key.to_string(), node.clone());
        self.queue.remove(key);

        // Bind asynchronously; the outcome comes back as an input.
        let state = self.state.clone();
        let tx = self.inputs.clone();
        let k = key.to_string();
        let delayed_claims = volume_check.delayed_claims();
        self.rt.spawn(async move {
            // PreBind: the pod's WaitForFirstConsumer claims follow the node.
            if let Err(why) = volumes::prebind(state.clone(), &ns, &delayed_claims, &node).await {
                let _ = tx.send(Input::Bound(k, BindOutcome::Retry(why)));
                return;
            }
            let info = resources::lookup("", "v1", "pods").expect("pods");
            let t = Target {
                info,
                namespace: Some(ns.clone()),
                name: Some(name.clone()),
                sub: Some("binding".into()),
            };
            let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": ns}, "target": {"kind": "Node", "name": node}});
            let outcome = match handlers::bind(&state, &t, binding).await {
                Ok(()) => BindOutcome::Bound,
                Err(crate::api::error::ApiError::NotFound { .. })
                | Err(crate::api::error::ApiError::Conflict { .. }) => BindOutcome::Gone,
                Err(e) => BindOutcome::Retry(format!("{:?}", e.status()["message"])),
            };
            let _ = tx.send(Input::Bound(k, outcome));
        });
    }

    fn on_bound(&mut self, key: &str, outcome: BindOutcome) {
        match outcome {
            BindOutcome::Bound => {}
            BindOutcome::Gone => {
                // Deleted or bound by someone else: the watch tells the truth.
                if self.assumed.remove(key).is_some() {
                    self.forget_view_pod(key, b"");
                }
            }
            BindOutcome::Retry(why) => {
                tracing::warn!(pod = %key, %why, "binding failed; will retry");
                if self.assumed.remove(key).is_some() {
                    self.forget_view_pod(key, b"");
                }
                if self.pending.contains_key(key) {
                    self.queue.retry_later(key, Instant::now());
                }
            }
        }
    }

    fn mark_unschedulable(&self, ns: &str, name: &str, message: String) {
        let state = self.state.clone();
        let (ns, name) = (ns.to_string(), name.to_string());
        self.rt.spawn(async move {
            if let Err(e) = record_unschedulable(&state, &ns, &name, &message).await {
                tracing::debug!(pod = %name, error = ?e.status(), "could not record unschedulable pod");
            }
        });
    }
}

/// Set `PodScheduled=False` (reason Unschedulable) and emit a FailedScheduling Event.
async fn record_unschedulable(
    state: &AppState,
    ns: &str,
    name: &str,
    message: &str,
) -> Result<(), crate::api::error::ApiError> {
    let info = resources::lookup("", "v1", "pods").expect("pods");
    let key = info.key(Some(ns), name);
    let uid = match state.store.get(&key)? {
        Some(kv) => object::meta_str(&object::from_store(&kv)?, "uid")
            .unwrap_or("")
            .to_string(),
        None => return Ok(()),
    };
    let now = object::now_rfc3339();
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": object::generate_name(&format!("{name}.")), "namespace": ns},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": name, "uid": uid, "apiVersion": "v1"},
        "reason": "FailedScheduling", "message": message, "type": "Warning",
        "source": {"component": DEFAULT_PROFILE}, "reportingComponent": DEFAULT_PROFILE,
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    });
    // The Event goes first, so whoever sees the condition can also find it.
    handlers::create_object(state, "", "events", Some(ns), event).await?;
    for _ in 0..8 {
        let Some(kv) = state.store.get(&key)? else {
            return Ok(());
        };
        let mut pod = object::from_store(&kv)?;
        let mut conds: Vec<Value> = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let existing = conds.iter().find(|c| c["type"] == "PodScheduled");
        if existing.is_some_and(|c| c["status"] == "False" && c["message"] == message) {
            break;
        }
        conds.retain(|c| c["type"] != "PodScheduled");
        conds.push(json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": object::now_rfc3339()}));
        pod["status"]["conditions"] = Value::Array(conds);
        use crate::store::{Op, Precondition, StoreError};
        match state
            .store
            .txn(vec![Op::Put {
                key: key.clone(),
                value: object::to_store(&mut pod),
                precondition: Precondition::ModRevision(kv.mod_revision),
            }])
            .await
        {
            Ok(_) => break,
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(v: Value) -> Option<PodHead> {
        PodHead::parse(v.to_string().as_bytes())
    }

    #[test]
    fn pod_head_reads_what_the_scheduler_needs() {
        let pod = json!({
            "metadata": {"name": "p\"q", "namespace": "ns", "labels": {"a": "b"},
                         "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "schedulerName": "other", "priority": 7,
                     "containers": [{"name": "c"}]},
            "status": {"phase": "Failed"},
        });
        let h = head(pod.clone()).unwrap();
        assert_eq!(h, PodHead::parse_value(&pod).unwrap());
        assert_eq!(
            h,
            PodHead {
                namespace: "ns".into(),
                name: "p\"q".into(),
                node_name: Some("n1".into()),
                scheduler_name: "other".into(),
                priority: 7,
                deleting: true,
                terminal: true,
            }
        );
        let pending = json!({"metadata": {"name": "p", "deletionTimestamp": null},
                             "spec": {"nodeName": "", "priority": null}, "status": null});
        let h = head(pending.clone()).unwrap();
        assert_eq!(h, PodHead::parse_value(&pending).unwrap());
        assert_eq!(
            (
                h.node_name,
                h.scheduler_name.as_str(),
                h.priority,
                h.deleting,
                h.terminal
            ),
            (None, DEFAULT_PROFILE, 0, false, false)
        );
    }

    #[test]
    fn pod_head_falls_back_on_unexpected_types_and_refuses_non_objects() {
        // A float priority or a numeric name would fail the typed read.
        let odd = json!({"metadata": {"name": 5}, "spec": {"priority": 1.5}});
        let h = head(odd).unwrap();
        assert_eq!((h.name.as_str(), h.priority), ("", 0));
        assert!(PodHead::parse(b"[1]").is_none());
        assert!(PodHead::parse(b"{not json").is_none());
    }

    #[test]
    fn with_node_name_sets_the_field_like_a_full_parse() {
        let pods = [
            json!({"metadata": {"name": "p", "annotations": {"spec": "{\"x\": 1}"}},
                   "spec": {"containers": [{"name": "c", "spec": {"a": [1, {"b": "}"}]}}]},
                   "status": {}}),
            json!({"status": {"spec": {}}, "spec": {}}),
            json!({"kind": "Pod", "spec": { } }),
        ];
        for pod in pods {
            let text = serde_json::to_string_pretty(&pod).unwrap();
            for json_text in [pod.to_string(), text] {
                let set = with_node_name(&json_text, "node-\"1").expect("spec found");
                let mut want = pod.clone();
                want["spec"]["nodeName"] = json!("node-\"1");
                let got: Value = serde_json::from_str(&set).unwrap();
                assert_eq!(got, want, "{json_text}");
            }
        }
        // No spec object, or a nodeName already present: the caller's full parse.
        assert_eq!(with_node_name(r#"{"metadata": {}}"#, "n"), None);
        assert_eq!(with_node_name(r#"{"spec": []}"#, "n"), None);
        assert_eq!(with_node_name(r#"{"spec": {"nodeName": ""}}"#, "n"), None);
        assert_eq!(with_node_name(r#"{"metadata": {"spec": {}}}"#, "n"), None);
    }
}
