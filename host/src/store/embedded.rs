//! The embedded store on redb: a single writer thread group-commits queued
//! transactions into one durable redb transaction, then fans the events out.

use super::{
    Event, EventKind, KeyValue, ListResult, Op, Precondition, Revision, Store, StoreError,
    TxnResult, WatchStream,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Objects: key → `[mod_rev u64][create_rev u64][json]`.
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// Change log: revision → encoded events of that revision.
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
/// Counters: `revision`, `compacted`.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most transactions folded into one redb commit.
const MAX_BATCH: usize = 2048;

/// Tuning for the embedded store.
#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    /// How many revisions of change log to keep for watch resume.
    pub history: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions { history: 200_000 }
    }
}

struct Request {
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<TxnResult, StoreError>>,
}

/// Observer of commit latency (for metrics); called once per redb commit.
pub type CommitObserver = Arc<dyn Fn(Duration, usize) + Send + Sync>;

/// The redb-backed [`Store`].
pub struct EmbeddedStore {
    db: Arc<Database>,
    tx: mpsc::UnboundedSender<Request>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    revision: Arc<AtomicU64>,
    compacted: Arc<AtomicU64>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Close the queue so the writer finishes what it has, then wait for it,
        // so the database file is released when the store is gone.
        self.tx = mpsc::unbounded_channel().0;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode_object(key: &str, raw: &[u8]) -> KeyValue {
    let mod_revision = u64::from_le_bytes(raw[0..8].try_into().expect("8 bytes"));
    let create_revision = u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes"));
    KeyValue {
        key: key.to_string(),
        value: Bytes::copy_from_slice(&raw[16..]),
        mod_revision,
        create_revision,
    }
}

fn encode_object(mod_rev: u64, create_rev: u64, json: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + json.len());
    v.extend_from_slice(&mod_rev.to_le_bytes());
    v.extend_from_slice(&create_rev.to_le_bytes());
    v.extend_from_slice(json);
    v
}

fn put_chunk(buf: &mut Vec<u8>, data: Option<&[u8]>) {
    match data {
        None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
        Some(d) => {
            buf.extend_from_slice(&(d.len() as u32).to_le_bytes());
            buf.extend_from_slice(d);
        }
    }
}

fn take_chunk<'a>(raw: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    if raw.len() < 4 {
        return None;
    }
    let len = u32::from_le_bytes(raw[0..4].try_into().ok()?);
    *raw = &raw[4..];
    if len == u32::MAX {
        return Some(None);
    }
    let len = len as usize;
    if raw.len() < len {
        return None;
    }
    let (d, rest) = raw.split_at(len);
    *raw = rest;
    Some(Some(d))
}

/// Change-log event kinds. `PUT_FULL` (older files) carries the previous
/// value inline; `PUT` carries only the revision of the previous value (it is
/// that revision's entry in the log), which keeps an update's log entry to
/// one copy of the object; `DELETE` carries the deleted value.
const PUT_FULL: u8 = 0;
const DELETE: u8 = 1;
const PUT: u8 = 2;

/// Change log entry: sequence of events, each
/// `[kind u8][create_rev u64]` then for `PUT` `[prev_rev u64][key][value]`,
/// otherwise `[key][value?][prev?]`.
fn encode_events(events: &[Event], prev_revs: &[Revision]) -> Vec<u8> {
    let mut buf = Vec::new();
    for (e, &prev_rev) in events.iter().zip(prev_revs) {
        match e.kind {
            EventKind::Put => {
                buf.push(PUT);
                buf.extend_from_slice(&e.create_revision.to_le_bytes());
                buf.extend_from_slice(&prev_rev.to_le_bytes());
                put_chunk(&mut buf, Some(e.key.as_bytes()));
                put_chunk(&mut buf, e.value.as_deref());
            }
            EventKind::Delete => {
                buf.push(DELETE);
                buf.extend_from_slice(&e.create_revision.to_le_bytes());
                put_chunk(&mut buf, Some(e.key.as_bytes()));
                put_chunk(&mut buf, None);
                put_chunk(&mut buf, e.prev.as_deref());
            }
        }
    }
    buf
}

/// How [`EmbeddedStore::rewrite_values`] transforms one value stored at a
/// key: the new bytes, or `None` to keep it.
pub type RewriteFn<'a> = dyn Fn(&str, &[u8]) -> Result<Option<Vec<u8>>, StoreError> + 'a;

/// A change-log entry with the values (and inline previous values) of keys
/// under `prefix` passed through `f`; `None` when nothing changed.
fn rewrite_log_entry(
    revision: Revision,
    mut raw: &[u8],
    prefix: &str,
    f: &RewriteFn<'_>,
    rewritten: &mut usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    let bad = || StoreError::Backend(format!("corrupt change log entry at revision {revision}"));
    let mut out = Vec::with_capacity(raw.len() + 64);
    let mut changed = false;
    while !raw.is_empty() {
        let (header, values) = match raw[0] {
            PUT => (17, 1),
            PUT_FULL | DELETE => (9, 2),
            _ => return Err(bad()),
        };
        let head = raw.get(..header).ok_or_else(bad)?;
        out.extend_from_slice(head);
        raw = &raw[header..];
        let key = take_chunk(&mut raw).flatten().ok_or_else(bad)?;
        put_chunk(&mut out, Some(key));
        let key = std::str::from_utf8(key).map_err(|_| bad())?;
        for _ in 0..values {
            match take_chunk(&mut raw).ok_or_else(bad)? {
                Some(value) if key.starts_with(prefix) => match f(key, value)? {
                    Some(new) => {
                        put_chunk(&mut out, Some(&new));
                        changed = true;
                        *rewritten += 1;
                    }
                    None => put_chunk(&mut out, Some(value)),
                },
                value => put_chunk(&mut out, value),
            }
        }
    }
    Ok(changed.then_some(out))
}

/// One decoded log event and, for `PUT`, the revision holding its previous
/// value (0 when the key was new).
type LoggedEvent = (Event, Revision);

fn decode_events(revision: Revision, mut raw: &[u8]) -> Result<Vec<LoggedEvent>, StoreError> {
    let bad = || StoreError::Backend(format!("corrupt change log entry at revision {revision}"));
    let u64_at = |raw: &[u8], at: usize| -> Result<u64, StoreError> {
        raw.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or_else(bad)
    };
    let mut out = Vec::new();
    while !raw.is_empty() {
        let kind = raw[0];
        let create_revision = u64_at(raw, 1)?;
        raw = &raw[9..];
        let mut prev_rev = 0;
        if kind == PUT {
            prev_rev = u64_at(raw, 0)?;
            raw = &raw[8..];
        }
        let key = take_chunk(&mut raw).flatten().ok_or_else(bad)?;
        let value = take_chunk(&mut raw).ok_or_else(bad)?;
        let prev = if kind == PUT {
            None
        } else {
            take_chunk(&mut raw).ok_or_else(bad)?
        };
        let kind = match kind {
            PUT_FULL | PUT => EventKind::Put,
            DELETE => EventKind::Delete,
            _ => return Err(bad()),
        };
        out.push((
            Event {
                revision,
                kind,
                key: String::from_utf8(key.to_vec()).map_err(|_| bad())?,
                value: value.map(Bytes::copy_from_slice),
                prev: prev.map(Bytes::copy_from_slice),
                create_revision,
            },
            prev_rev,
        ));
    }
    Ok(out)
}

/// Fill in the previous values of `PUT` events from the log entries they
/// point at. A previous value already compacted away stays `None` (readers
/// treat a modification without a previous value as "unknown before").
fn resolve_prevs(
    changes: &redb::ReadOnlyTable<u64, &[u8]>,
    logged: Vec<LoggedEvent>,
) -> Result<Vec<Event>, StoreError> {
    let mut cache: HashMap<Revision, Vec<LoggedEvent>> = HashMap::new();
    let mut out = Vec::with_capacity(logged.len());
    for (mut e, prev_rev) in logged {
        if prev_rev != 0 && e.prev.is_none() {
            e.prev = lookup_value(changes, &mut cache, prev_rev, &e.key)?;
        }
        out.push(e);
    }
    Ok(out)
}

/// The value `key` was given at revision `rev`, from the log.
fn lookup_value(
    changes: &redb::ReadOnlyTable<u64, &[u8]>,
    cache: &mut HashMap<Revision, Vec<LoggedEvent>>,
    rev: Revision,
    key: &str,
) -> Result<Option<Bytes>, StoreError> {
    if !cache.contains_key(&rev) {
        let evs = match changes.get(rev).map_err(backend)? {
            Some(raw) => decode_events(rev, raw.value())?,
            None => Vec::new(),
        };
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(rev, evs);
    }
    Ok(cache[&rev]
        .iter()
        .find(|(e, _)| e.key == key)
        .and_then(|(e, _)| e.value.clone()))
}

impl EmbeddedStore {
    /// Open (or create) the database file and start the writer thread.
    pub fn open(
        path: &Path,
        options: EmbeddedOptions,
        observer: Option<CommitObserver>,
    ) -> Result<Self, StoreError> {
        let db = Database::builder()
            .set_cache_size(256 << 20)
            .create(path)
            .map_err(backend)?;
        let (revision, compacted) = {
            let w = db.begin_write().map_err(backend)?;
            let (r, c) = {
                w.open_table(OBJECTS).map_err(backend)?;
                w.open_table(CHANGES).map_err(backend)?;
                let meta = w.open_table(META).map_err(backend)?;
                let r = meta
                    .get("revision")
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                let c = meta
                    .get("compacted")
                    .map_err(backend)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                (r, c)
            };
            w.commit().map_err(backend)?;
            (r, c)
        };
        let db = Arc::new(db);
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(4096);
        let revision = Arc::new(AtomicU64::new(revision));
        let compacted = Arc::new(AtomicU64::new(compacted));
        let writer = Writer {
            db: db.clone(),
            rx,
            events: events.clone(),
            revision: revision.clone(),
            compacted: compacted.clone(),
            history: options.history.max(1),
            observer,
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run())
            .map_err(backend)?;
        Ok(EmbeddedStore {
            db,
            tx,
            events,
            revision,
            compacted,
            writer: Some(writer),
        })
    }

    /// The last revision committed to the file (may be ahead of the
    /// published `revision` for the moment between commit and broadcast).
    fn committed_revision(&self) -> Result<Revision, StoreError> {
        let r = self.db.begin_read().map_err(backend)?;
        let meta = r.open_table(META).map_err(backend)?;
        let rev = meta.get("revision").map_err(backend)?.map(|v| v.value());
        Ok(rev.unwrap_or(0))
    }

    /// Rewrites, in one durable transaction, the stored values of keys under
    /// `prefix` in the objects table and in every retained change-log entry
    /// (values and previous values), keeping revisions as they are. `f`
    /// returns the new bytes for a value, or `None` to keep it. Does nothing
    /// when the `meta` counter `marker.0` already holds `marker.1`, and sets it
    /// after. Returns how many values were rewritten. Used by Secrets
    /// encryption at rest (`store::encrypted::reencrypt`) at start, before the
    /// store serves anything.
    pub fn rewrite_values(
        &self,
        prefix: &str,
        marker: (&str, u64),
        f: &RewriteFn<'_>,
    ) -> Result<usize, StoreError> {
        let w = self.db.begin_write().map_err(backend)?;
        let mut rewritten = 0;
        {
            let mut meta = w.open_table(META).map_err(backend)?;
            if meta.get(marker.0).map_err(backend)?.map(|v| v.value()) == Some(marker.1) {
                return Ok(0);
            }
            let mut objects = w.open_table(OBJECTS).map_err(backend)?;
            let mut updates = Vec::new();
            for entry in objects.range(prefix..).map_err(backend)? {
                let (k, v) = entry.map_err(backend)?;
                let (key, raw) = (k.value(), v.value());
                if !key.starts_with(prefix) {
                    break;
                }
                if let Some(new) = f(key, &raw[16..])? {
                    let mut out = raw[..16].to_vec();
                    out.extend_from_slice(&new);
                    updates.push((key.to_string(), out));
                }
            }
            rewritten += updates.len();
            for (key, raw) in &updates {
                objects
                    .insert(key.as_str(), raw.as_slice())
                    .map_err(backend)?;
            }
            let mut changes = w.open_table(CHANGES).map_err(backend)?;
            let mut updates = Vec::new();
            for entry in changes.iter().map_err(backend)? {
                let (rev, raw) = entry.map_err(backend)?;
                if let Some(new) =
                    rewrite_log_entry(rev.value(), raw.value(), prefix, f, &mut rewritten)?
                {
                    updates.push((rev.value(), new));
                }
            }
            for (rev, raw) in &updates {
                changes.insert(*rev, raw.as_slice()).map_err(backend)?;
            }
            meta.insert(marker.0, marker.1).map_err(backend)?;
        }
        w.commit().map_err(backend)?;
        Ok(rewritten)
    }

    fn read_changes(&self, after: Revision, upto: Revision) -> Result<Vec<Event>, StoreError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(CHANGES).map_err(backend)?;
        let mut logged = Vec::new();
        for entry in t.range(after + 1..=upto).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            logged.extend(decode_events(k.value(), v.value())?);
        }
        resolve_prevs(&t, logged)
    }
}

impl Store for EmbeddedStore {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(OBJECTS).map_err(backend)?;
        Ok(t.get(key)
            .map_err(backend)?
            .map(|v| decode_object(key, v.value())))
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<ListResult, StoreError> {
        let r = self.db.begin_read().map_err(backend)?;
        let meta = r.open_table(META).map_err(backend)?;
        let current = meta
            .get("revision")
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        let compacted = meta
            .get("compacted")
            .map_err(backend)?
            .map(|v| v.value())
            .unwrap_or(0);
        let objects = r.open_table(OBJECTS).map_err(backend)?;
        let at = at.unwrap_or(current);
        if at > current {
            return Err(StoreError::FutureRevision(at));
        }
        let in_range = |k: &str| k.starts_with(prefix) && start_after.is_none_or(|s| k > s);
        // For a list at a past revision, undo later changes from the change log.
        let mut overlay: std::collections::BTreeMap<String, Option<KeyValue>> = Default::default();
        if at < current {
            if at < compacted {
                return Err(StoreError::Compacted {
                    requested: at,
                    oldest: compacted,
                });
            }
            let changes = r.open_table(CHANGES).map_err(backend)?;
            let mut lookups = HashMap::new();
            for entry in changes.range(at + 1..=current).map_err(backend)? {
                let (rev, raw) = entry.map_err(backend)?;
                for (e, prev_rev) in decode_events(rev.value(), raw.value())? {
                    if !in_range(&e.key) || overlay.contains_key(&e.key) {
                        continue;
                    }
                    // The earliest change after `at` tells the value at `at`: its prev.
                    let old = if let Some(p) = &e.prev {
                        // Inline (deletes, older entries): its mod revision is
                        // found below as the latest earlier change.
                        Some(KeyValue {
                            key: e.key.clone(),
                            value: p.clone(),
                            mod_revision: 0,
                            create_revision: e.create_revision,
                        })
                    } else if prev_rev != 0 {
                        let Some(value) = lookup_value(&changes, &mut lookups, prev_rev, &e.key)?
                        else {
                            // The value at `at` is older than the retained log.
                            return Err(StoreError::Compacted {
                                requested: at,
                                oldest: compacted,
                            });
                        };
                        Some(KeyValue {
                            key: e.key.clone(),
                            value,
                            mod_revision: prev_rev,
                            create_revision: e.create_revision,
                        })
                    } else {
                        None
                    };
                    overlay.insert(e.key.clone(), old);
                }
            }
            // Fill in mod revisions of resurrected values from the log before `at`.
            for (key, kv) in overlay.iter_mut() {
                if let Some(kv) = kv.as_mut().filter(|kv| kv.mod_revision == 0) {
                    kv.mod_revision = find_mod_revision(&changes, key, at, compacted)?;
                }
            }
        }
        let start = match start_after {
            Some(s) if s >= prefix => s.to_string(),
            _ => prefix.to_string(),
        };
        let mut items = Vec::new();
        let mut more = false;
        let mut overlay_iter = overlay.into_iter().peekable();
        let push = |kv: KeyValue, items: &mut Vec<KeyValue>| -> bool {
            if limit > 0 && items.len() >= limit {
                return false;
            }
            items.push(kv);
            true
        };
        'outer: for entry in objects.range(start.as_str()..).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            if !in_range(key) {
                continue;
            }
            // Emit overlay keys that sort before this one (deleted since `at`).
            while let Some((ok, _)) = overlay_iter.peek() {
                if ok.as_str() >= key {
                    break;
                }
                let (_, old) = overlay_iter.next().expect("peeked");
                if let Some(old) = old {
                    if !push(old, &mut items) {
                        more = true;
                        break 'outer;
                    }
                }
            }
            let kv = match overlay_iter.peek() {
                Some((ok, _)) if ok.as_str() == key => overlay_iter.next().expect("peeked").1,
                _ => Some(decode_object(key, v.value())),
            };
            if let Some(kv) = kv {
                if !push(kv, &mut items) {
                    more = true;
                    break;
                }
            }
        }
        if !more {
            for (_, old) in overlay_iter {
                if let Some(old) = old {
                    if !push(old, &mut items) {
                        more = true;
                        break;
                    }
                }
            }
        }
        Ok(ListResult {
            items,
            revision: at,
            more,
        })
    }

    fn count(&self, prefix: &str) -> Result<usize, StoreError> {
        let r = self.db.begin_read().map_err(backend)?;
        let t = r.open_table(OBJECTS).map_err(backend)?;
        let mut n = 0;
        for entry in t.range(prefix..).map_err(backend)? {
            let (k, _) = entry.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            n += 1;
        }
        Ok(n)
    }

    fn txn(&self, ops: Vec<Op>) -> BoxFuture<'static, Result<TxnResult, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.send(Request { ops, reply });
        Box::pin(async move {
            sent.map_err(|_| StoreError::Closed)?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }

    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe before reading history so no revision falls between the two.
        let mut live = self.events.subscribe();
        let oldest = self.compacted.load(Ordering::Acquire);
        if after < oldest {
            return Err(StoreError::Compacted {
                requested: after,
                oldest,
            });
        }
        // The committed revision, not the published one: a list that read a
        // commit whose events are not broadcast yet returns that revision,
        // and a watch from it must not be refused. Those events reach this
        // watcher from the log here; their broadcast, which comes later, is
        // filtered out as already seen.
        let current = self
            .revision
            .load(Ordering::Acquire)
            .max(self.committed_revision()?);
        if after > current {
            return Err(StoreError::FutureRevision(after));
        }
        let history = self.read_changes(after, current)?;
        let prefix = prefix.to_string();
        let db = self.db.clone();
        let compacted = self.compacted.clone();
        let stream = async_stream(move |yield_tx| async move {
            let mut last = after;
            let filter = |evs: &[Event], last: Revision| -> Vec<Event> {
                evs.iter()
                    .filter(|e| e.revision > last && e.key.starts_with(&prefix))
                    .cloned()
                    .collect()
            };
            let first = filter(&history, last);
            last = last.max(current);
            if yield_tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                match live.recv().await {
                    Ok(batch) => {
                        let Some(top) = batch.last().map(|e| e.revision) else {
                            continue;
                        };
                        let evs = filter(&batch, last);
                        last = last.max(top);
                        if yield_tx.send(Ok(evs)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // Fell behind the live fan-out: catch up from the durable log.
                        let oldest = compacted.load(Ordering::Acquire);
                        if last < oldest {
                            let _ = yield_tx
                                .send(Err(StoreError::Compacted {
                                    requested: last,
                                    oldest,
                                }))
                                .await;
                            return;
                        }
                        let r = read_log(&db, last);
                        match r {
                            Ok((evs, top)) => {
                                let evs = filter(&evs, last);
                                last = last.max(top);
                                if yield_tx.send(Ok(evs)).await.is_err() {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = yield_tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        let _ = yield_tx.send(Err(StoreError::Closed)).await;
                        return;
                    }
                }
            }
        });
        Ok(stream)
    }

    fn current_revision(&self) -> Revision {
        self.revision.load(Ordering::Acquire)
    }

    fn oldest_revision(&self) -> Revision {
        self.compacted.load(Ordering::Acquire)
    }
}

/// Everything in the log after `after`, and the highest revision read.
fn read_log(db: &Database, after: Revision) -> Result<(Vec<Event>, Revision), StoreError> {
    let r = db.begin_read().map_err(backend)?;
    let t = r.open_table(CHANGES).map_err(backend)?;
    let mut logged = Vec::new();
    let mut top = after;
    for entry in t.range(after + 1..).map_err(backend)? {
        let (k, v) = entry.map_err(backend)?;
        top = k.value();
        logged.extend(decode_events(k.value(), v.value())?);
    }
    Ok((resolve_prevs(&t, logged)?, top))
}

/// The revision of the last change to `key` at or before `at`.
fn find_mod_revision(
    changes: &redb::ReadOnlyTable<u64, &[u8]>,
    key: &str,
    at: Revision,
    compacted: Revision,
) -> Result<Revision, StoreError> {
    for entry in changes.range(compacted + 1..=at).map_err(backend)?.rev() {
        let (rev, raw) = entry.map_err(backend)?;
        if decode_events(rev.value(), raw.value())?
            .iter()
            .any(|(e, _)| e.key == key)
        {
            return Ok(rev.value());
        }
    }
    // Changed before the retained history: the best we know is the oldest bound.
    Ok(compacted)
}

/// Build a stream from a producer task that sends into a bounded channel.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(mpsc::Sender<Result<Vec<Event>, StoreError>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

struct Writer {
    db: Arc<Database>,
    rx: mpsc::UnboundedReceiver<Request>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    revision: Arc<AtomicU64>,
    compacted: Arc<AtomicU64>,
    history: u64,
    observer: Option<CommitObserver>,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit_batch(batch);
        }
    }

    fn commit_batch(&mut self, batch: Vec<Request>) {
        let started = Instant::now();
        let n = batch.len();
        let mut outcomes: Vec<(oneshot::Sender<_>, Result<TxnResult, StoreError>)> =
            Vec::with_capacity(n);
        let mut all_events: Vec<Event> = Vec::new();
        let base = self.revision.load(Ordering::Acquire);
        let mut rev = base;
        let result = (|| -> Result<(), StoreError> {
            let w = self.db.begin_write().map_err(backend)?;
            {
                let mut objects = w.open_table(OBJECTS).map_err(backend)?;
                let mut changes = w.open_table(CHANGES).map_err(backend)?;
                for req in batch {
                    match apply_ops(&mut objects, &req.ops, rev + 1) {
                        Ok((res, events, prev_revs)) => {
                            rev += 1;
                            changes
                                .insert(rev, encode_events(&events, &prev_revs).as_slice())
                                .map_err(backend)?;
                            all_events.extend(events);
                            outcomes.push((req.reply, Ok(res)));
                        }
                        Err(e) => outcomes.push((req.reply, Err(e))),
                    }
                }
                let mut meta = w.open_table(META).map_err(backend)?;
                meta.insert("revision", rev).map_err(backend)?;
                // Bound the change log: drop the oldest revisions past the history window.
                let compacted = self.compacted.load(Ordering::Acquire);
                if rev > self.history && rev - self.history > compacted + 1024 {
                    let new_compacted = rev - self.history;
                    changes
                        .retain_in(compacted..=new_compacted, |_, _| false)
                        .map_err(backend)?;
                    meta.insert("compacted", new_compacted).map_err(backend)?;
                    self.compacted.store(new_compacted, Ordering::Release);
                }
            }
            w.commit().map_err(backend)?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.revision.store(rev, Ordering::Release);
                if let Some(obs) = &self.observer {
                    obs(started.elapsed(), n);
                }
                if !all_events.is_empty() {
                    let _ = self.events.send(Arc::new(all_events));
                }
                for (reply, res) in outcomes {
                    let _ = reply.send(res);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                for (reply, _) in outcomes {
                    let _ = reply.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

fn apply_ops(
    objects: &mut redb::Table<&str, &[u8]>,
    ops: &[Op],
    rev: Revision,
) -> Result<(TxnResult, Vec<Event>, Vec<Revision>), StoreError> {
    // Check every precondition first so a failed transaction writes nothing.
    let mut currents = Vec::with_capacity(ops.len());
    for op in ops {
        let key = op.key();
        let cur = objects
            .get(key)
            .map_err(backend)?
            .map(|v| decode_object(key, v.value()));
        let pre = match op {
            Op::Put { precondition, .. } | Op::Delete { precondition, .. } => *precondition,
        };
        let ok = match (pre, &cur) {
            (Precondition::None, _) => true,
            (Precondition::Absent, c) => c.is_none(),
            (Precondition::Present, c) => c.is_some(),
            (Precondition::ModRevision(r), Some(c)) => c.mod_revision == r,
            (Precondition::ModRevision(_), None) => false,
        };
        if !ok {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                current: cur.map(Box::new),
            });
        }
        currents.push(cur);
    }
    let mut events = Vec::with_capacity(ops.len());
    let mut prev_revs = Vec::with_capacity(ops.len());
    let mut create_revisions = Vec::with_capacity(ops.len());
    for (op, cur) in ops.iter().zip(currents.iter()) {
        match op {
            Op::Put { key, value, .. } => {
                let create = cur.as_ref().map(|c| c.create_revision).unwrap_or(rev);
                objects
                    .insert(key.as_str(), encode_object(rev, create, value).as_slice())
                    .map_err(backend)?;
                create_revisions.push(create);
                prev_revs.push(cur.as_ref().map(|c| c.mod_revision).unwrap_or(0));
                events.push(Event {
                    revision: rev,
                    kind: EventKind::Put,
                    key: key.clone(),
                    value: Some(value.clone()),
                    prev: cur.as_ref().map(|c| c.value.clone()),
                    create_revision: create,
                });
            }
            Op::Delete { key, .. } => {
                objects.remove(key.as_str()).map_err(backend)?;
                create_revisions.push(0);
                if let Some(c) = cur {
                    prev_revs.push(c.mod_revision);
                    events.push(Event {
                        revision: rev,
                        kind: EventKind::Delete,
                        key: key.clone(),
                        value: None,
                        prev: Some(c.value.clone()),
                        create_revision: c.create_revision,
                    });
                }
            }
        }
    }
    Ok((
        TxnResult {
            revision: rev,
            create_revisions,
            prev: currents,
        },
        events,
        prev_revs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, v: &str, p: Precondition) -> Op {
        Op::Put {
            key: key.into(),
            value: Bytes::from(v.to_string()),
            precondition: p,
        }
    }

    fn open(dir: &tempfile::TempDir, history: u64) -> EmbeddedStore {
        EmbeddedStore::open(
            &dir.path().join("db.redb"),
            EmbeddedOptions { history },
            None,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn preconditions_and_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, 1000);
        let r1 = s
            .txn(vec![put("a/1", "x", Precondition::Absent)])
            .await
            .unwrap();
        assert_eq!(r1.revision, 1);
        let err = s
            .txn(vec![put("a/1", "y", Precondition::Absent)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        let err = s
            .txn(vec![put("a/1", "y", Precondition::ModRevision(7))])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        let r2 = s
            .txn(vec![put("a/1", "y", Precondition::ModRevision(1))])
            .await
            .unwrap();
        assert_eq!(r2.revision, 2);
        let kv = s.get("a/1").unwrap().unwrap();
        assert_eq!(
            (kv.mod_revision, kv.create_revision, &kv.value[..]),
            (2, 1, &b"y"[..])
        );
        assert_eq!(s.current_revision(), 2);
    }

    #[tokio::test]
    async fn list_at_past_revision_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, 1000);
        for i in 0..5 {
            s.txn(vec![put(
                &format!("p/{i}"),
                &format!("v{i}"),
                Precondition::None,
            )])
            .await
            .unwrap();
        }
        s.txn(vec![put("p/0", "changed", Precondition::None)])
            .await
            .unwrap();
        s.txn(vec![Op::Delete {
            key: "p/3".into(),
            precondition: Precondition::None,
        }])
        .await
        .unwrap();
        s.txn(vec![put("p/9", "new", Precondition::None)])
            .await
            .unwrap();
        s.txn(vec![put("q/1", "other", Precondition::None)])
            .await
            .unwrap();
        let now = s.list("p/", None, 0, None).unwrap();
        let keys: Vec<_> = now.items.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["p/0", "p/1", "p/2", "p/4", "p/9"]);
        let old = s.list("p/", None, 0, Some(5)).unwrap();
        let vals: Vec<_> = old
            .items
            .iter()
            .map(|k| std::str::from_utf8(&k.value).unwrap())
            .collect();
        assert_eq!(vals, ["v0", "v1", "v2", "v3", "v4"]);
        assert_eq!(old.items[0].mod_revision, 1);
        let page = s.list("p/", Some("p/1"), 2, Some(5)).unwrap();
        let keys: Vec<_> = page.items.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["p/2", "p/3"]);
        assert!(page.more);
    }

    #[tokio::test]
    async fn previous_values_come_back_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir, 1000);
            s.txn(vec![put("p/a", "v1", Precondition::None)])
                .await
                .unwrap(); // 1
            s.txn(vec![put("p/a", "v2", Precondition::None)])
                .await
                .unwrap(); // 2
            s.txn(vec![put("p/b", "b1", Precondition::None)])
                .await
                .unwrap(); // 3
            s.txn(vec![Op::Delete {
                key: "p/b".into(),
                precondition: Precondition::None,
            }])
            .await
            .unwrap(); // 4
            s.txn(vec![put("p/a", "v3", Precondition::None)])
                .await
                .unwrap(); // 5
        }
        // Reopened: nothing is in memory, everything comes from the log.
        let s = open(&dir, 1000);
        let mut w = s.watch("p/", 1).unwrap();
        let evs = w.next().await.unwrap().unwrap();
        let seen: Vec<_> = evs
            .iter()
            .map(|e| {
                let text = |b: &Option<Bytes>| {
                    b.as_deref().map(|b| String::from_utf8(b.to_vec()).unwrap())
                };
                (e.revision, e.key.clone(), text(&e.value), text(&e.prev))
            })
            .collect();
        let s2 = |x: &str| Some(x.to_string());
        assert_eq!(
            seen,
            [
                (2, "p/a".into(), s2("v2"), s2("v1")),
                (3, "p/b".into(), s2("b1"), None),
                (4, "p/b".into(), None, s2("b1")),
                (5, "p/a".into(), s2("v3"), s2("v2")),
            ]
        );
        // A list at revision 3 rebuilds p/a = v2 with its exact mod revision.
        let l = s.list("p/", None, 0, Some(3)).unwrap();
        let items: Vec<_> = l
            .items
            .iter()
            .map(|kv| (kv.key.as_str(), &kv.value[..], kv.mod_revision))
            .collect();
        assert_eq!(items, [("p/a", &b"v2"[..], 2), ("p/b", &b"b1"[..], 3)]);
    }

    #[tokio::test]
    async fn watch_resumes_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(&dir, 1000);
            for i in 0..3 {
                s.txn(vec![put(&format!("w/{i}"), "v", Precondition::None)])
                    .await
                    .unwrap();
            }
        }
        let s = open(&dir, 1000);
        assert_eq!(s.current_revision(), 3);
        let mut w = s.watch("w/", 1).unwrap();
        let first = w.next().await.unwrap().unwrap();
        assert_eq!(first.iter().map(|e| e.revision).collect::<Vec<_>>(), [2, 3]);
        s.txn(vec![put("x/1", "v", Precondition::None)])
            .await
            .unwrap();
        s.txn(vec![put("w/9", "v", Precondition::None)])
            .await
            .unwrap();
        let mut seen = Vec::new();
        while seen.is_empty() {
            seen = w.next().await.unwrap().unwrap();
        }
        assert_eq!(seen[0].key, "w/9");
        assert_eq!(seen[0].revision, 5);
    }

    #[tokio::test]
    async fn compaction_gives_compacted_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir, 10);
        for i in 0..1100 {
            s.txn(vec![put(&format!("c/{}", i % 7), "v", Precondition::None)])
                .await
                .unwrap();
        }
        assert!(s.oldest_revision() > 0);
        assert!(matches!(
            s.watch("c/", 1),
            Err(StoreError::Compacted { .. })
        ));
        assert!(s.watch("c/", s.current_revision() - 5).is_ok());
    }

    #[tokio::test]
    async fn concurrent_txns_are_batched_and_all_applied() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(open(&dir, 100_000));
        let mut handles = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                s.txn(vec![put(&format!("b/{i:03}"), "v", Precondition::Absent)])
                    .await
                    .unwrap()
            }));
        }
        let mut revs: Vec<_> = Vec::new();
        for h in handles {
            revs.push(h.await.unwrap().revision);
        }
        revs.sort();
        revs.dedup();
        assert_eq!(revs.len(), 200);
        assert_eq!(s.count("b/").unwrap(), 200);
    }
}
