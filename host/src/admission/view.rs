//! The view an admission plugin asked for with `interests`: the current
//! objects of those kinds, plus a log of changes since, fed by a store watch.
//! A new instance observes the snapshot; a pooled one observes the changes
//! it has not seen before its next call. An instance too far behind (the log
//! was trimmed past it) is dropped and replaced.

use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use crate::api::AppState;
use crate::plugin::ObjectEvent;
use crate::store::EventKind;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

/// Changes kept for instances to catch up on before the log is trimmed.
const MAX_LOG: usize = 4096;

/// A plugin's view of the kinds it asked for.
pub struct View {
    inner: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Current object per store key, as the event that last set it.
    objects: BTreeMap<String, ObjectEvent>,
    handles: HashMap<String, u32>,
    next_handle: u32,
    /// Changes since `base` (the sequence number of `events[0]`).
    events: Vec<ObjectEvent>,
    base: u64,
}

impl Log {
    fn apply(&mut self, kind: &str, key: String, deleted: bool, obj: String) {
        let handle = match self.handles.get(&key) {
            Some(h) => *h,
            None if deleted => return,
            None => {
                self.next_handle += 1;
                self.handles.insert(key.clone(), self.next_handle);
                self.next_handle
            }
        };
        let ev = ObjectEvent {
            kind: kind.to_string(),
            handle,
            deleted,
            object: obj,
        };
        if deleted {
            self.objects.remove(&key);
            self.handles.remove(&key);
        } else {
            self.objects.insert(key, ev.clone());
        }
        self.events.push(ev);
        if self.events.len() > MAX_LOG {
            self.base += self.events.len() as u64;
            self.events.clear();
        }
    }

    fn seq(&self) -> u64 {
        self.base + self.events.len() as u64
    }
}

impl View {
    /// List `kinds` now and keep following them (until the view is dropped).
    pub fn start(state: Arc<AppState>, kinds: &[String]) -> Arc<View> {
        let view = Arc::new(View {
            inner: Mutex::new(Log::default()),
        });
        let infos: Vec<(String, &'static ResourceInfo)> = kinds
            .iter()
            .filter_map(|k| {
                resources::RESOURCES
                    .iter()
                    .find(|r| r.kind == k)
                    .map(|r| (k.clone(), r))
            })
            .collect();
        for (kind, info) in infos {
            let prefix = info.prefix(None);
            let Ok(list) = state.store.list(&prefix, None, 0, None) else {
                continue;
            };
            {
                let mut log = view.lock();
                for kv in &list.items {
                    if let Ok(obj) = object::from_store(kv) {
                        log.apply(&kind, kv.key.clone(), false, obj.to_string());
                    }
                }
                // Instances start from the objects, not from the listing's events.
                log.base = log.seq();
                log.events.clear();
            }
            let Ok(mut stream) = state.store.watch(&prefix, list.revision) else {
                continue;
            };
            let weak: Weak<View> = Arc::downgrade(&view);
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                continue;
            };
            rt.spawn(async move {
                while let Some(Ok(batch)) = stream.next().await {
                    let Some(view) = weak.upgrade() else { return };
                    let mut log = view.lock();
                    for ev in batch {
                        let deleted = ev.kind == EventKind::Delete;
                        let bytes = if deleted { ev.prev } else { ev.value };
                        let text = bytes
                            .and_then(|b| object::from_bytes(&b, ev.revision).ok())
                            .map(|v| v.to_string())
                            .unwrap_or_default();
                        log.apply(&kind, ev.key, deleted, text);
                    }
                }
            });
        }
        view
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every current object, and the sequence number a new instance starts at.
    pub fn snapshot(&self) -> (Vec<ObjectEvent>, u64) {
        let log = self.lock();
        (log.objects.values().cloned().collect(), log.seq())
    }

    /// Changes after `seq` and the new position, or `None` when they were trimmed.
    pub fn since(&self, seq: u64) -> Option<(Vec<ObjectEvent>, u64)> {
        let log = self.lock();
        if seq < log.base {
            return None;
        }
        let from = (seq - log.base) as usize;
        Some((log.events.get(from..)?.to_vec(), log.seq()))
    }
}
