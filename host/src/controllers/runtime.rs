//! The controller runtime: informers (list, then watch from the list's
//! revision), key mapping, a deduplicating work queue with rate-limited
//! retries, and the reconcile loop.

use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::ResourceInfo;
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What to do after a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reconcile this key again after the given time (even without changes).
    Requeue(Duration),
    /// Nothing more until something changes.
    AwaitChange,
}

/// Identifies one primary object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// Namespace (None for cluster-scoped).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// The key of an object itself.
    pub fn of(obj: &Value) -> Option<ObjectKey> {
        Some(ObjectKey {
            namespace: object::meta_str(obj, "namespace").map(str::to_string),
            name: object::meta_str(obj, "name")?.to_string(),
        })
    }
}

/// Maps a changed object to the primary keys to reconcile.
pub type Mapper = Arc<dyn Fn(&Value) -> Vec<ObjectKey> + Send + Sync>;

/// One watched kind and how its changes map to primary keys.
pub struct Watch {
    /// The watched resource.
    pub resource: &'static ResourceInfo,
    /// Old and new versions of every changed object go through this.
    pub map: Mapper,
}

impl Watch {
    /// Watch the primary kind itself.
    pub fn primary(resource: &'static ResourceInfo) -> Watch {
        Watch {
            resource,
            map: Arc::new(|o| ObjectKey::of(o).into_iter().collect()),
        }
    }

    /// Watch a dependent kind, mapping to its controller owner of `owner_kind`.
    pub fn owned(resource: &'static ResourceInfo, owner_kind: &'static str) -> Watch {
        Watch {
            resource,
            map: Arc::new(move |o| {
                let ns = object::meta_str(o, "namespace").map(str::to_string);
                o.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter(|r| r["kind"] == owner_kind && r["controller"] == true)
                    .filter_map(|r| r["name"].as_str())
                    .map(|n| ObjectKey {
                        namespace: ns.clone(),
                        name: n.to_string(),
                    })
                    .collect()
            }),
        }
    }
}

/// A controller.
pub trait Reconciler: Send + Sync + 'static {
    /// Name, for logs.
    fn name(&self) -> &'static str;
    /// What to watch.
    fn watches(&self) -> Vec<Watch>;
    /// Converge the world for one key: idempotent and level-based.
    fn reconcile(
        &self,
        client: &LocalClient,
        key: &ObjectKey,
    ) -> impl Future<Output = Result<Action, ApiError>> + Send;
}

/// Deduplicating work queue with delayed entries.
#[derive(Default)]
struct WorkQueue {
    ready: VecDeque<ObjectKey>,
    queued: HashSet<ObjectKey>,
    delayed: BTreeMap<(Instant, u64), ObjectKey>,
    seq: u64,
    failures: HashMap<ObjectKey, u32>,
}

impl WorkQueue {
    fn add(&mut self, k: ObjectKey) {
        if self.queued.insert(k.clone()) {
            self.ready.push_back(k);
        }
    }

    fn add_after(&mut self, k: ObjectKey, d: Duration) {
        self.seq += 1;
        self.delayed.insert((Instant::now() + d, self.seq), k);
    }

    /// Move due delayed keys to ready; returns when the next one is due.
    fn promote(&mut self) -> Option<Instant> {
        let now = Instant::now();
        while let Some((&(at, seq), _)) = self.delayed.iter().next() {
            if at > now {
                return Some(at);
            }
            let k = self.delayed.remove(&(at, seq)).expect("present");
            self.add(k);
        }
        None
    }

    fn pop(&mut self) -> Option<ObjectKey> {
        let k = self.ready.pop_front()?;
        self.queued.remove(&k);
        Some(k)
    }

    /// Per-key exponential backoff: 5 ms doubling, capped at 60 s.
    fn backoff(&mut self, k: &ObjectKey) -> Duration {
        let n = self.failures.entry(k.clone()).or_default();
        *n += 1;
        (Duration::from_millis(5) * 2u32.saturating_pow((*n - 1).min(16)))
            .min(Duration::from_secs(60))
    }
}

/// Run a controller until its task is aborted.
pub async fn run<R: Reconciler>(r: Arc<R>, client: LocalClient) {
    let (tx, mut rx) = mpsc::unbounded_channel::<ObjectKey>();
    for w in r.watches() {
        tokio::spawn(informer(client.clone(), w, tx.clone(), r.name()));
    }
    drop(tx);
    let mut q = WorkQueue::default();
    loop {
        let next = q.promote();
        while let Ok(k) = rx.try_recv() {
            q.add(k);
        }
        if let Some(k) = q.pop() {
            match r.reconcile(&client, &k).await {
                Ok(action) => {
                    q.failures.remove(&k);
                    if let Action::Requeue(d) = action {
                        q.add_after(k, d);
                    }
                }
                Err(e) => {
                    let d = q.backoff(&k);
                    tracing::debug!(controller = r.name(), key = ?k, error = ?e.status()["message"], retry_in = ?d, "reconcile failed");
                    q.add_after(k, d);
                }
            }
            continue;
        }
        let sleep = next
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            k = rx.recv() => match k {
                Some(k) => q.add(k),
                None => return,
            },
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Events decoded once and shared by every informer: each controller that
/// watches pods would otherwise parse the same JSON again (value and previous
/// value) for every change. Keyed by (revision, key, which side), which fixes
/// the content; bounded, oldest entries dropped first.
struct DecodeCache {
    map: HashMap<(u64, Arc<str>, bool), Arc<Value>>,
    order: VecDeque<(u64, Arc<str>, bool)>,
}

const DECODE_CACHE_ENTRIES: usize = 16_384;

static DECODED: std::sync::Mutex<Option<DecodeCache>> = std::sync::Mutex::new(None);

/// The event's new (`prev == false`) or previous object, parsed once.
fn decoded(e: &crate::store::Event, prev: bool) -> Option<Arc<Value>> {
    let raw = if prev {
        e.prev.as_ref()
    } else {
        e.value.as_ref()
    }?;
    let key: (u64, Arc<str>, bool) = (e.revision, Arc::from(e.key.as_str()), prev);
    if let Some(v) = DECODED
        .lock()
        .expect("decode cache lock")
        .as_ref()
        .and_then(|c| c.map.get(&key).cloned())
    {
        return Some(v);
    }
    let v = Arc::new(object::from_bytes(raw, e.revision).ok()?);
    let mut guard = DECODED.lock().expect("decode cache lock");
    let c = guard.get_or_insert_with(|| DecodeCache {
        map: HashMap::new(),
        order: VecDeque::new(),
    });
    if c.map.insert(key.clone(), v.clone()).is_none() {
        c.order.push_back(key);
        while c.order.len() > DECODE_CACHE_ENTRIES {
            if let Some(old) = c.order.pop_front() {
                c.map.remove(&old);
            }
        }
    }
    Some(v)
}

async fn informer(
    client: LocalClient,
    w: Watch,
    tx: mpsc::UnboundedSender<ObjectKey>,
    name: &'static str,
) {
    loop {
        let (items, rev) = match client.list(w.resource, None, None) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(controller = name, error = ?e.status()["message"], "list failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for o in &items {
            for k in (w.map)(o) {
                if tx.send(k).is_err() {
                    return;
                }
            }
        }
        let mut stream = match client.watch(w.resource, None, rev) {
            Ok(s) => s,
            Err(_) => continue,
        };
        while let Some(batch) = stream.next().await {
            let Ok(events) = batch else { break };
            for e in events {
                for o in [decoded(&e, false), decoded(&e, true)]
                    .into_iter()
                    .flatten()
                {
                    for k in (w.map)(&o) {
                        if tx.send(k).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: &str) -> ObjectKey {
        ObjectKey {
            namespace: None,
            name: n.into(),
        }
    }

    #[test]
    fn queue_dedupes_and_backs_off() {
        let mut q = WorkQueue::default();
        q.add(k("a"));
        q.add(k("a"));
        q.add(k("b"));
        assert_eq!(q.pop(), Some(k("a")));
        assert_eq!(q.pop(), Some(k("b")));
        assert_eq!(q.pop(), None);
        assert_eq!(q.backoff(&k("a")), Duration::from_millis(5));
        assert_eq!(q.backoff(&k("a")), Duration::from_millis(10));
        for _ in 0..30 {
            q.backoff(&k("a"));
        }
        assert_eq!(q.backoff(&k("a")), Duration::from_secs(60));
    }

    #[test]
    fn owned_maps_to_controller_owner() {
        let info = crate::api::resources::lookup("", "v1", "pods").unwrap();
        let w = Watch::owned(info, "ReplicaSet");
        let pod = serde_json::json!({"metadata": {"name": "p", "namespace": "d", "ownerReferences": [
            {"kind": "ReplicaSet", "name": "rs1", "controller": true, "uid": "1", "apiVersion": "apps/v1"},
            {"kind": "ReplicaSet", "name": "other", "uid": "2", "apiVersion": "apps/v1"}]}});
        assert_eq!(
            (w.map)(&pod),
            vec![ObjectKey {
                namespace: Some("d".into()),
                name: "rs1".into()
            }]
        );
    }
}
