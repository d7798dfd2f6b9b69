//! Helpers for object metadata and for moving objects in and out of the store.

use super::error::{ApiError, ApiResult};
use crate::store::{KeyValue, Revision};
use bytes::Bytes;
use serde_json::{Map, Value};

/// The object's metadata map, created if missing.
pub fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Map::new());
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

/// A string field of metadata.
pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// Set `metadata.resourceVersion`.
pub fn set_resource_version(obj: &mut Value, rev: Revision) {
    meta_mut(obj).insert("resourceVersion".into(), Value::String(rev.to_string()));
}

/// Decode a stored object and stamp its resourceVersion.
pub fn from_store(kv: &KeyValue) -> ApiResult<Value> {
    from_bytes(&kv.value, kv.mod_revision)
}

/// Decode stored bytes with a given resourceVersion.
pub fn from_bytes(raw: &[u8], rev: Revision) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::Internal(format!("stored object is not valid JSON: {e}")))?;
    set_resource_version(&mut v, rev);
    Ok(v)
}

/// Encode for storage: the resourceVersion is not stored (it is the key's revision).
pub fn to_store(obj: &mut Value) -> Bytes {
    let rv = meta_mut(obj).remove("resourceVersion");
    let bytes = serde_json::to_vec(obj).expect("a Value always serializes");
    if let Some(rv) = rv {
        meta_mut(obj).insert("resourceVersion".into(), rv);
    }
    Bytes::from(bytes)
}

/// Parse a resourceVersion string.
pub fn parse_rv(s: &str) -> ApiResult<Revision> {
    s.parse::<Revision>().map_err(|_| {
        ApiError::BadRequest(format!(
            "invalid resource version \"{s}\": must be a decimal number"
        ))
    })
}

/// RFC 3339 timestamp with second precision, as Kubernetes writes them.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Characters Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A name from a generateName prefix.
pub fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let base: String = prefix.chars().take(63 - 5).collect();
    let suffix: String = (0..5)
        .map(|_| SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())] as char)
        .collect();
    format!("{base}{suffix}")
}
