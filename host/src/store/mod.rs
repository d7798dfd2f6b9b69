//! The store: objects keyed by resource path, a change log keyed by revision,
//! and one revision counter, behind a trait the API server uses.

pub mod embedded;
pub mod encrypted;

pub use embedded::EmbeddedStore;

use bytes::Bytes;
use futures::stream::BoxStream;

/// A store revision; surfaced to clients as `resourceVersion`.
pub type Revision = u64;

/// One stored object with its revisions.
#[derive(Debug, Clone)]
pub struct KeyValue {
    /// Resource path key, e.g. `core/pods/default/web-0`.
    pub key: String,
    /// Object JSON as stored (without `resourceVersion`).
    pub value: Bytes,
    /// Revision of the last change to this key.
    pub mod_revision: Revision,
    /// Revision at which this key was created.
    pub create_revision: Revision,
}

/// A precondition on the current state of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition.
    None,
    /// The key must not exist.
    Absent,
    /// The key must exist with exactly this modification revision.
    ModRevision(Revision),
    /// The key must exist (any revision).
    Present,
}

/// One write in a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create or replace the value at `key`.
    Put {
        key: String,
        value: Bytes,
        precondition: Precondition,
    },
    /// Remove `key`.
    Delete {
        key: String,
        precondition: Precondition,
    },
}

impl Op {
    /// The key this operation touches.
    pub fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }
}

/// What happened to a key at a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or updated.
    Put,
    /// Removed.
    Delete,
}

/// One change, as delivered to watchers.
#[derive(Debug, Clone)]
pub struct Event {
    /// Revision of the change.
    pub revision: Revision,
    /// Put or delete.
    pub kind: EventKind,
    /// Key changed.
    pub key: String,
    /// New value (puts only).
    pub value: Option<Bytes>,
    /// Value before the change, if the key existed.
    pub prev: Option<Bytes>,
    /// Creation revision of the key (0 for deletes of unknown keys).
    pub create_revision: Revision,
}

/// A page of a list.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// Items in key order.
    pub items: Vec<KeyValue>,
    /// Revision the list reflects.
    pub revision: Revision,
    /// Whether more items follow the last one returned.
    pub more: bool,
}

/// Result of a committed transaction.
#[derive(Debug, Clone)]
pub struct TxnResult {
    /// Revision assigned to the transaction.
    pub revision: Revision,
    /// Creation revision for each op's key (for puts; 0 for deletes).
    pub create_revisions: Vec<Revision>,
    /// Previous value of each op's key, if it existed.
    pub prev: Vec<Option<KeyValue>>,
}

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A precondition failed; carries the index of the op and the current value.
    #[error("precondition failed on {key}")]
    Conflict {
        key: String,
        current: Option<Box<KeyValue>>,
    },
    /// The requested revision is older than the retained history.
    #[error("required revision {requested} has been compacted (oldest available is {oldest})")]
    Compacted {
        requested: Revision,
        oldest: Revision,
    },
    /// The requested revision is in the future.
    #[error("revision {0} is newer than the store's current revision")]
    FutureRevision(Revision),
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// Backend failure (I/O, corruption).
    #[error("storage backend: {0}")]
    Backend(String),
}

/// A stream of watch batches; each item is the events of one or more revisions in order.
pub type WatchStream = BoxStream<'static, Result<Vec<Event>, StoreError>>;

/// What the API server needs of a store. The embedded redb store implements it;
/// an etcd backend can implement it later.
pub trait Store: Send + Sync + 'static {
    /// Read one key at the current revision.
    fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// List keys under `prefix` after `start_after`, up to `limit` (0 = all), at
    /// `at` (None = current revision).
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        at: Option<Revision>,
    ) -> Result<ListResult, StoreError>;
    /// Count keys under a prefix.
    fn count(&self, prefix: &str) -> Result<usize, StoreError>;
    /// Apply ops atomically and durably; all preconditions must hold.
    fn txn(
        &self,
        ops: Vec<Op>,
    ) -> futures::future::BoxFuture<'static, Result<TxnResult, StoreError>>;
    /// Events for keys under `prefix` with revision greater than `after`.
    fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError>;
    /// The current revision.
    fn current_revision(&self) -> Revision;
    /// The oldest revision a watch may resume after.
    fn oldest_revision(&self) -> Revision;
}
