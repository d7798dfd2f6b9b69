//! Kubernetes strategic merge patch, applied on the server side.
//!
//! This is what `kubectl apply` and `kubectl patch --type=strategic` send. It follows
//! apimachinery's `strategicpatch` apply path (parallel deletion lists merged, unmatched
//! nulls dropped):
//!
//! * maps merge recursively and a `null` deletes a key;
//! * lists are replaced, unless the field has a patch strategy: lists of objects with a
//!   merge key merge element by element, lists of primitives are unioned;
//! * the directives `$patch` (`replace`, `delete`, `merge`), `$retainKeys`,
//!   `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` are honoured and
//!   never appear in the result.
//!
//! Element order follows apimachinery: elements named by the patch (or by its
//! `$setElementOrder` list) take that order, and elements only the server has are slotted
//! back in where they stood in the live list. So an element new to a merged list, sent
//! without `$setElementOrder`, comes first, as it does against a real API server.
//!
//! Deliberate differences from apimachinery, all on inputs it rejects or mishandles:
//! `$patch: merge` is accepted as a no-op instead of an error; `$patch: delete` on a map
//! removes the field instead of leaving `{}`; directives inside values that have no
//! counterpart in the original are processed instead of being stored verbatim;
//! `{"$patch": "replace"}` is also understood in lists of primitives.

use serde_json::{Map, Value};
use ListStrategy::{MergeByKey, MergePrimitives};

/// Key of the `$patch` directive.
const PATCH: &str = "$patch";
/// Key of the `$retainKeys` directive.
const RETAIN_KEYS: &str = "$retainKeys";
/// Prefix of `$setElementOrder/<field>` keys.
const SET_ORDER: &str = "$setElementOrder/";
/// Prefix of `$deleteFromPrimitiveList/<field>` keys.
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

type Object = Map<String, Value>;

/// How a list field is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the original list (the default).
    Replace,
    /// Objects are matched by the named field and merged (`patchStrategy:"merge"` with a key).
    MergeByKey(&'static str),
    /// Primitive values are unioned (`patchStrategy:"merge"` without a key).
    MergePrimitives,
}

/// Patch metadata for one kind: field path -> list strategy, and which map fields have retainKeys.
///
/// Paths are dotted from the object root with list indexes dropped, e.g.
/// `spec.template.spec.containers.ports`.
pub trait PatchMeta: Send + Sync {
    /// Merge strategy of the list at `path`.
    fn list_strategy(&self, path: &str) -> ListStrategy;
    /// Whether the map at `path` (or each element of the list at `path`) has the retainKeys strategy.
    ///
    /// `apply` honours `$retainKeys` wherever it appears, as apimachinery does; this flag
    /// is what a patch generator needs to decide when to emit one.
    fn retain_keys(&self, path: &str) -> bool;
}

/// Why a strategic merge patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch document is not a JSON object.
    #[error("strategic merge patch must be a JSON object, not {0}")]
    PatchNotObject(&'static str),
    /// The object being patched is not a JSON object.
    #[error("the object to patch must be a JSON object, not {0}")]
    OriginalNotObject(&'static str),
    /// A `$patch` directive has an unknown value.
    #[error(
        "invalid $patch directive {value} at {path}: expected \"replace\", \"delete\" or \"merge\""
    )]
    InvalidDirective {
        /// Field path where the directive was found.
        path: String,
        /// The offending value, as JSON.
        value: String,
    },
    /// A directive is not of the shape it must have.
    #[error("invalid {directive} at {path}: {reason}")]
    MalformedDirective {
        /// Field path where the directive was found.
        path: String,
        /// The directive key.
        directive: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An element of a merged list lacks the list's merge key.
    #[error("an element of the list at {path} lacks its merge key \"{key}\"")]
    MissingMergeKey {
        /// Field path of the list.
        path: String,
        /// The merge key.
        key: &'static str,
    },
    /// The patch sets a field that its `$retainKeys` list does not keep.
    #[error("field \"{field}\" at {path} is set by the patch but not listed in its $retainKeys")]
    NotInRetainKeys {
        /// Field path of the map.
        path: String,
        /// The field missing from `$retainKeys`.
        field: String,
    },
    /// A merged list holds objects and primitives together.
    #[error("the list at {path} mixes objects with other values, so it cannot be merged")]
    MixedList {
        /// Field path of the list.
        path: String,
    },
    /// A merged list holds lists.
    #[error("the list at {path} holds lists, which strategic merge patch cannot merge")]
    ListOfLists {
        /// Field path of the list.
        path: String,
    },
    /// A list of objects is declared as a primitive merge list, so no key matches its elements.
    #[error("the list of objects at {path} has no patch merge key, so it cannot be merged")]
    NoMergeKey {
        /// Field path of the list.
        path: String,
    },
    /// A list's elements are not in the relative order its `$setElementOrder` gives.
    #[error("the order of the list at {path} does not match its $setElementOrder list")]
    OrderMismatch {
        /// Field path of the list.
        path: String,
    },
}

/// Apply `patch` to `original` and return the result.
///
/// A `null` original is treated as `{}`.
pub fn apply(original: &Value, patch: &Value, meta: &dyn PatchMeta) -> Result<Value, PatchError> {
    let patch = match patch {
        Value::Object(p) => p,
        other => return Err(PatchError::PatchNotObject(type_name(other))),
    };
    let base = match original {
        Value::Object(o) => o.clone(),
        Value::Null => Object::new(),
        other => return Err(PatchError::OriginalNotObject(type_name(other))),
    };
    let merged = Merger { meta }.merge_map(base, patch, "")?;
    // `$patch: delete` at the root leaves nothing to keep.
    Ok(Value::Object(merged.unwrap_or_default()))
}

/// Patch metadata for a built-in kind by its Kubernetes Kind name ("Pod", "Deployment", ...). Unknown kinds get metadata-only rules.
pub fn patch_meta_for_kind(kind: &str) -> &'static dyn PatchMeta {
    match kind {
        "Pod" => &POD,
        "PodTemplate" => &POD_TEMPLATE,
        "Deployment" => &DEPLOYMENT,
        "ReplicaSet" | "DaemonSet" | "Job" | "ReplicationController" => &WORKLOAD,
        "StatefulSet" => &STATEFUL_SET,
        "CronJob" => &CRON_JOB,
        "Service" => &SERVICE,
        "Node" => &NODE,
        "Namespace" | "PersistentVolumeClaim" => &CONDITIONS_ONLY,
        "ServiceAccount" => &SERVICE_ACCOUNT,
        // Endpoints, EndpointSlice, ConfigMap, Secret, Event, Lease, the RBAC kinds and
        // PersistentVolume declare no patch strategy outside their metadata.
        _ => &METADATA_ONLY,
    }
}

// ---------------------------------------------------------------------------------------
// Merging
// ---------------------------------------------------------------------------------------

/// A parsed `$patch` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Directive {
    Replace,
    Delete,
    Merge,
}

/// Carries the metadata through the recursion.
struct Merger<'a> {
    meta: &'a dyn PatchMeta,
}

impl Merger<'_> {
    /// Merge `patch` into the map `original`; `None` means the map itself is deleted.
    fn merge_map(
        &self,
        original: Object,
        patch: &Object,
        path: &str,
    ) -> Result<Option<Object>, PatchError> {
        match directive_of(patch, path)? {
            Some(Directive::Delete) => Ok(None),
            // Replacing is merging into nothing, which also cleans nested directives.
            Some(Directive::Replace) => self.merge_fields(Object::new(), patch, path).map(Some),
            Some(Directive::Merge) | None => self.merge_fields(original, patch, path).map(Some),
        }
    }

    /// Merge every field of `patch` into `original`, ignoring a top-level `$patch`.
    fn merge_fields(
        &self,
        mut original: Object,
        patch: &Object,
        path: &str,
    ) -> Result<Object, PatchError> {
        if let Some(keys) = patch.get(RETAIN_KEYS) {
            retain_keys(&mut original, patch, keys, path)?;
        }

        // Ordered lists first: the list and its order travel together.
        let mut ordered: Vec<&str> = Vec::new();
        for (key, order) in patch {
            if let Some(field) = key.strip_prefix(SET_ORDER) {
                if self.merge_ordered_list(&mut original, patch, field, order, path)? {
                    ordered.push(field);
                }
            }
        }

        for (key, value) in patch {
            if is_directive_key(key) || ordered.contains(&key.as_str()) {
                continue;
            }
            if value.is_null() {
                // shift_remove keeps the remaining fields in their order.
                original.shift_remove(key);
                continue;
            }
            let child = join(path, key);
            let current = original.get_mut(key).map(std::mem::take);
            let next = match (current, value) {
                (Some(Value::Object(o)), Value::Object(p)) => {
                    self.merge_map(o, p, &child)?.map(Value::Object)
                }
                (Some(Value::Array(o)), Value::Array(p)) => {
                    Some(Value::Array(self.merge_list(o, p, &child)?))
                }
                _ => self.fresh(value, &child)?,
            };
            match next {
                Some(v) => {
                    original.insert(key.clone(), v);
                }
                None => {
                    original.shift_remove(key);
                }
            }
        }

        // Deletions run after merges so a field that is both merged and pruned ends pruned.
        for (key, value) in patch {
            if let Some(field) = key.strip_prefix(DELETE_PRIMITIVES) {
                let doomed = value
                    .as_array()
                    .ok_or_else(|| PatchError::MalformedDirective {
                        path: shown(path),
                        directive: key.clone(),
                        reason: "it must be a list of values",
                    })?;
                if let Some(Value::Array(list)) = original.get_mut(field) {
                    list.retain(|v| !doomed.contains(v));
                }
            }
        }
        Ok(original)
    }

    /// Handle `$setElementOrder/<field>`; returns whether `field` was fully dealt with.
    fn merge_ordered_list(
        &self,
        original: &mut Object,
        patch: &Object,
        field: &str,
        order: &Value,
        path: &str,
    ) -> Result<bool, PatchError> {
        let child = join(path, field);
        let malformed = |reason| PatchError::MalformedDirective {
            path: shown(path),
            directive: format!("{SET_ORDER}{field}"),
            reason,
        };
        let order = order
            .as_array()
            .ok_or_else(|| malformed("it must be a list"))?;
        let patch_list = match patch.get(field) {
            None => None,
            // Deleting the list outranks ordering it; the main loop removes it.
            Some(Value::Null) => return Ok(false),
            Some(Value::Array(list)) => Some(list),
            Some(_) => return Err(malformed("the field it orders must be a list")),
        };
        let key = match self.meta.list_strategy(&child) {
            ListStrategy::MergeByKey(k) => Some(k),
            _ => None,
        };
        if let Some(list) = patch_list {
            check_order(list, order, key, &child)?;
        }
        let wanted = identities(order, key, &child)?;
        // The live list is consumed by the merge; its order is remembered first.
        let live = match original.get_mut(field) {
            Some(Value::Array(list)) => Some(std::mem::take(list)),
            _ => None,
        };
        let live_ids: Vec<Value> = live
            .iter()
            .flatten()
            .filter_map(|v| identity(v, key).cloned())
            .collect();
        let merged = match (live, patch_list) {
            (Some(o), Some(p)) => self.merge_list(o, p, &child)?,
            (Some(o), None) => o,
            (None, Some(p)) => self.fresh_list(p, &child)?,
            (None, None) => return Ok(true),
        };
        original.insert(
            field.to_owned(),
            Value::Array(arrange(merged, &wanted, &live_ids, key)),
        );
        Ok(true)
    }

    /// Merge the list `patch` into the list `original` by the strategy of `path`.
    fn merge_list(
        &self,
        original: Vec<Value>,
        patch: &[Value],
        path: &str,
    ) -> Result<Vec<Value>, PatchError> {
        let strategy = self.meta.list_strategy(path);
        if strategy == ListStrategy::Replace {
            return self.fresh_list(patch, path);
        }
        if original.is_empty() && patch.is_empty() {
            return Ok(original);
        }
        let objects = match list_shape(&original, patch, path)? {
            Some(objects) => objects,
            // Only directive markers: decide by what the field is declared to hold.
            None => matches!(strategy, ListStrategy::MergeByKey(_)),
        };
        match (objects, strategy) {
            (true, ListStrategy::MergeByKey(key)) => self.merge_keyed(original, patch, key, path),
            (true, _) => Err(PatchError::NoMergeKey { path: shown(path) }),
            (false, _) => merge_primitives(original, patch, path),
        }
    }

    /// Merge lists of objects matched by `key`.
    fn merge_keyed(
        &self,
        mut base: Vec<Value>,
        patch: &[Value],
        key: &'static str,
        path: &str,
    ) -> Result<Vec<Value>, PatchError> {
        let missing_key = || PatchError::MissingMergeKey {
            path: shown(path),
            key,
        };
        let mut items: Vec<&Object> = Vec::new();
        let mut replace = false;
        for element in patch {
            let Value::Object(item) = element else {
                return Err(PatchError::MixedList { path: shown(path) });
            };
            match directive_of(item, path)? {
                None => items.push(item),
                Some(Directive::Delete) => {
                    let id = item.get(key).ok_or_else(missing_key)?;
                    base.retain(|v| v.get(key) != Some(id));
                }
                // Keep scanning: every other marker must still be valid.
                Some(Directive::Replace) => replace = true,
                Some(Directive::Merge) => {
                    if item.len() > 1 {
                        items.push(item);
                    }
                }
            }
        }
        if replace {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(Value::Object(self.merge_fields(
                    Object::new(),
                    item,
                    path,
                )?));
            }
            return Ok(out);
        }

        // The live order after deletions decides where server-only elements go.
        let live: Vec<Value> = base.iter().filter_map(|v| v.get(key).cloned()).collect();
        let mut wanted = Vec::with_capacity(items.len());
        for item in items {
            let id = item.get(key).ok_or_else(missing_key)?;
            wanted.push(id.clone());
            // Earlier patch elements count as existing, so duplicates merge together.
            match base.iter().position(|v| v.get(key) == Some(id)) {
                Some(at) => match std::mem::take(&mut base[at]) {
                    Value::Object(current) => match self.merge_map(current, item, path)? {
                        Some(m) => base[at] = Value::Object(m),
                        None => {
                            base.remove(at);
                        }
                    },
                    _ => return Err(PatchError::MixedList { path: shown(path) }),
                },
                None => base.push(Value::Object(self.merge_fields(
                    Object::new(),
                    item,
                    path,
                )?)),
            }
        }
        Ok(arrange(base, &wanted, &live, Some(key)))
    }

    /// The value a patch value becomes where the original has nothing to merge with.
    fn fresh(&self, value: &Value, path: &str) -> Result<Option<Value>, PatchError> {
        Ok(match value {
            Value::Object(m) => self.merge_map(Object::new(), m, path)?.map(Value::Object),
            Value::Array(list) => Some(Value::Array(self.fresh_list(list, path)?)),
            other => Some(other.clone()),
        })
    }

    /// A list taken from the patch as is, minus directive markers and nested directives.
    ///
    /// Elements are not merged by key here: a new list is stored as given, so two ports
    /// that share a number but differ in protocol both survive.
    fn fresh_list(&self, list: &[Value], path: &str) -> Result<Vec<Value>, PatchError> {
        let mut out = Vec::with_capacity(list.len());
        for element in list {
            if let Value::Object(item) = element {
                match directive_of(item, path)? {
                    // List-level markers have nothing to act on in a list being set whole.
                    Some(Directive::Replace | Directive::Delete) => continue,
                    Some(Directive::Merge) if item.len() == 1 => continue,
                    _ => {}
                }
            }
            if let Some(v) = self.fresh(element, path)? {
                out.push(v);
            }
        }
        Ok(out)
    }
}

/// Union two lists of primitives, patch values placed by the patch's order.
fn merge_primitives(
    original: Vec<Value>,
    patch: &[Value],
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    let mut values = Vec::with_capacity(patch.len());
    let mut replace = false;
    for element in patch {
        match element {
            Value::Object(marker) => match directive_of(marker, path)? {
                Some(Directive::Replace) => replace = true,
                _ => {
                    return Err(PatchError::MalformedDirective {
                        path: shown(path),
                        directive: PATCH.to_owned(),
                        reason: "a list of primitives only accepts {\"$patch\": \"replace\"}",
                    })
                }
            },
            v => values.push(v.clone()),
        }
    }
    if replace {
        return Ok(values);
    }
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + values.len());
    for v in original.iter().chain(&values) {
        if !merged.contains(v) {
            merged.push(v.clone());
        }
    }
    Ok(arrange(merged, &values, &original, None))
}

/// Drop the fields of `original` that `$retainKeys` does not list, after checking the patch.
fn retain_keys(
    original: &mut Object,
    patch: &Object,
    keys: &Value,
    path: &str,
) -> Result<(), PatchError> {
    let malformed = || PatchError::MalformedDirective {
        path: shown(path),
        directive: RETAIN_KEYS.to_owned(),
        reason: "it must be a list of field names",
    };
    let keys = keys.as_array().ok_or_else(malformed)?;
    let mut kept: Vec<&str> = Vec::with_capacity(keys.len());
    for key in keys {
        kept.push(key.as_str().ok_or_else(malformed)?);
    }
    // A patch that sets a field it also drops is contradictory; apimachinery rejects it.
    for (field, value) in patch {
        if !value.is_null() && !is_directive_key(field) && !kept.contains(&field.as_str()) {
            return Err(PatchError::NotInRetainKeys {
                path: shown(path),
                field: field.clone(),
            });
        }
    }
    original.retain(|field, _| kept.contains(&field.as_str()));
    Ok(())
}

/// Check that the patch list's elements appear in the same relative order as in `order`.
fn check_order(
    list: &[Value],
    order: &[Value],
    key: Option<&'static str>,
    path: &str,
) -> Result<(), PatchError> {
    if list.is_empty() || order.is_empty() {
        return Ok(());
    }
    let listed = identities(order, key, path)?;
    let mut next = 0;
    for element in list {
        // Deletions and other markers are not part of the resulting order.
        if matches!(element, Value::Object(m) if m.contains_key(PATCH)) {
            continue;
        }
        let id = identity(element, key).ok_or_else(|| missing(key, path))?;
        match listed[next..].iter().position(|l| l == id) {
            Some(at) => next += at + 1,
            None => return Err(PatchError::OrderMismatch { path: shown(path) }),
        }
    }
    Ok(())
}

/// Order `merged` the way apimachinery does.
///
/// Elements whose identity is in `wanted` take that order. The rest (elements only the
/// server has) keep their live order and are slotted in before the first wanted element
/// that stood after them in the live list; the ones that cannot be placed go last.
fn arrange(merged: Vec<Value>, wanted: &[Value], live: &[Value], key: Option<&str>) -> Vec<Value> {
    let position = |ids: &[Value], item: &Value| {
        identity(item, key).and_then(|id| ids.iter().position(|x| x == id))
    };
    let (mut ours, mut theirs): (Vec<Value>, Vec<Value>) = merged
        .into_iter()
        .partition(|item| position(wanted, item).is_some());
    ours.sort_by_key(|item| position(wanted, item));
    theirs.sort_by_key(|item| position(live, item).map_or((1, 0), |at| (0, at)));

    let before =
        |server: &Value, patched: &Value| match (position(live, server), position(live, patched)) {
            (Some(a), Some(b)) => a < b,
            _ => false,
        };
    let mut out = Vec::with_capacity(ours.len() + theirs.len());
    let mut theirs = theirs.into_iter().peekable();
    for item in ours {
        while let Some(server) = theirs.next_if(|server| before(server, &item)) {
            out.push(server);
        }
        out.push(item);
    }
    out.extend(theirs);
    out
}

/// Identities of the elements of an order list.
fn identities(
    order: &[Value],
    key: Option<&'static str>,
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    order
        .iter()
        .map(|v| identity(v, key).cloned().ok_or_else(|| missing(key, path)))
        .collect()
}

/// What makes a list element itself: its merge key value for objects of a keyed list, else the value.
fn identity<'v>(value: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match (key, value) {
        (Some(k), Value::Object(m)) => m.get(k),
        (_, v) => Some(v),
    }
}

/// The error for an element without its merge key.
fn missing(key: Option<&'static str>, path: &str) -> PatchError {
    PatchError::MissingMergeKey {
        path: shown(path),
        key: key.unwrap_or_default(),
    }
}

/// Whether the lists hold objects (`Some(true)`), primitives (`Some(false)`) or only markers (`None`).
fn list_shape(original: &[Value], patch: &[Value], path: &str) -> Result<Option<bool>, PatchError> {
    let mut shape = None;
    let markers_skipped = patch
        .iter()
        .filter(|v| !matches!(v, Value::Object(m) if m.contains_key(PATCH)));
    for element in original.iter().chain(markers_skipped) {
        let is_object = match element {
            Value::Array(_) => return Err(PatchError::ListOfLists { path: shown(path) }),
            Value::Object(_) => true,
            _ => false,
        };
        match shape {
            None => shape = Some(is_object),
            Some(seen) if seen != is_object => {
                return Err(PatchError::MixedList { path: shown(path) })
            }
            Some(_) => {}
        }
    }
    Ok(shape)
}

/// Parse the `$patch` directive of a map, if any.
fn directive_of(map: &Object, path: &str) -> Result<Option<Directive>, PatchError> {
    match map.get(PATCH) {
        None => Ok(None),
        Some(Value::String(s)) if s == "replace" => Ok(Some(Directive::Replace)),
        Some(Value::String(s)) if s == "delete" => Ok(Some(Directive::Delete)),
        Some(Value::String(s)) if s == "merge" => Ok(Some(Directive::Merge)),
        Some(other) => Err(PatchError::InvalidDirective {
            path: shown(path),
            value: other.to_string(),
        }),
    }
}

/// Whether a patch key is a directive rather than a field.
fn is_directive_key(key: &str) -> bool {
    key == PATCH
        || key == RETAIN_KEYS
        || key.starts_with(SET_ORDER)
        || key.starts_with(DELETE_PRIMITIVES)
}

/// The path of a child field.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A path as shown to users.
fn shown(path: &str) -> String {
    if path.is_empty() {
        "the object root".to_owned()
    } else {
        path.to_owned()
    }
}

/// JSON type name for error messages.
fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------------------------------
// Patch metadata of the built-in kinds
// ---------------------------------------------------------------------------------------

/// Patch metadata assembled from where ObjectMeta and PodSpec sit in a kind, plus extras.
struct KindMeta {
    /// Paths of embedded ObjectMeta besides the root `metadata`.
    metas: &'static [&'static str],
    /// Paths of PodSpec.
    pod_specs: &'static [&'static str],
    /// Other lists with a strategy, by full path.
    lists: &'static [(&'static str, ListStrategy)],
    /// Other retainKeys fields, by full path.
    retain: &'static [&'static str],
}

/// Lists of ObjectMeta (k8s.io/apimachinery meta/v1).
const OBJECT_META_LISTS: &[(&str, ListStrategy)] = &[
    ("ownerReferences", MergeByKey("uid")),
    ("finalizers", MergePrimitives),
];

/// Lists of PodSpec (k8s.io/api core/v1).
const POD_SPEC_LISTS: &[(&str, ListStrategy)] = &[
    ("volumes", MergeByKey("name")),
    ("initContainers", MergeByKey("name")),
    ("containers", MergeByKey("name")),
    ("ephemeralContainers", MergeByKey("name")),
    ("imagePullSecrets", MergeByKey("name")),
    ("hostAliases", MergeByKey("ip")),
    ("topologySpreadConstraints", MergeByKey("topologyKey")),
    ("schedulingGates", MergeByKey("name")),
    ("resourceClaims", MergeByKey("name")),
];

/// PodSpec lists whose elements have the retainKeys strategy.
const POD_SPEC_RETAIN: &[&str] = &["volumes", "resourceClaims"];

/// PodSpec fields holding containers.
const CONTAINER_FIELDS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// Lists of Container and EphemeralContainer.
const CONTAINER_LISTS: &[(&str, ListStrategy)] = &[
    ("ports", MergeByKey("containerPort")),
    ("env", MergeByKey("name")),
    ("volumeMounts", MergeByKey("mountPath")),
    ("volumeDevices", MergeByKey("devicePath")),
];

/// `status.conditions` merged by `type`, shared by most kinds with conditions.
const CONDITIONS: (&str, ListStrategy) = ("status.conditions", MergeByKey("type"));

static METADATA_ONLY: KindMeta = KindMeta {
    metas: &[],
    pod_specs: &[],
    lists: &[],
    retain: &[],
};

static POD: KindMeta = KindMeta {
    metas: &[],
    pod_specs: &["spec"],
    lists: &[
        CONDITIONS,
        ("status.podIPs", MergeByKey("ip")),
        ("status.hostIPs", MergeByKey("ip")),
        ("status.resourceClaimStatuses", MergeByKey("name")),
    ],
    retain: &["status.resourceClaimStatuses"],
};

static POD_TEMPLATE: KindMeta = KindMeta {
    metas: &["template.metadata"],
    pod_specs: &["template.spec"],
    lists: &[],
    retain: &[],
};

static WORKLOAD: KindMeta = KindMeta {
    metas: &["spec.template.metadata"],
    pod_specs: &["spec.template.spec"],
    lists: &[CONDITIONS],
    retain: &[],
};

static DEPLOYMENT: KindMeta = KindMeta {
    metas: &["spec.template.metadata"],
    pod_specs: &["spec.template.spec"],
    lists: &[CONDITIONS],
    retain: &["spec.strategy"],
};

static STATEFUL_SET: KindMeta = KindMeta {
    metas: &[
        "spec.template.metadata",
        "spec.volumeClaimTemplates.metadata",
    ],
    pod_specs: &["spec.template.spec"],
    lists: &[
        CONDITIONS,
        (
            "spec.volumeClaimTemplates.status.conditions",
            MergeByKey("type"),
        ),
    ],
    retain: &[],
};

static CRON_JOB: KindMeta = KindMeta {
    metas: &[
        "spec.jobTemplate.metadata",
        "spec.jobTemplate.spec.template.metadata",
    ],
    pod_specs: &["spec.jobTemplate.spec.template.spec"],
    lists: &[],
    retain: &[],
};

static SERVICE: KindMeta = KindMeta {
    metas: &[],
    pod_specs: &[],
    lists: &[("spec.ports", MergeByKey("port")), CONDITIONS],
    retain: &[],
};

// NodeSpec.taints declares no patch strategy upstream: a patch's taint list replaces the
// node's, which is what lets `kubectl taint ... key-` remove a taint.
static NODE: KindMeta = KindMeta {
    metas: &[],
    pod_specs: &[],
    lists: &[
        ("spec.podCIDRs", MergePrimitives),
        ("status.addresses", MergeByKey("type")),
        CONDITIONS,
    ],
    retain: &[],
};

static CONDITIONS_ONLY: KindMeta = KindMeta {
    metas: &[],
    pod_specs: &[],
    lists: &[CONDITIONS],
    retain: &[],
};

static SERVICE_ACCOUNT: KindMeta = KindMeta {
    metas: &[],
    pod_specs: &[],
    lists: &[("secrets", MergeByKey("name"))],
    retain: &[],
};

impl KindMeta {
    /// The rest of `path` under each embedded ObjectMeta.
    fn under_metas<'p>(&'p self, path: &'p str) -> impl Iterator<Item = &'p str> + 'p {
        std::iter::once("metadata")
            .chain(self.metas.iter().copied())
            .filter_map(move |p| below(path, p))
    }

    /// The rest of `path` under each PodSpec.
    fn under_pod_specs<'p>(&'p self, path: &'p str) -> impl Iterator<Item = &'p str> + 'p {
        self.pod_specs.iter().filter_map(move |p| below(path, p))
    }
}

impl PatchMeta for KindMeta {
    fn list_strategy(&self, path: &str) -> ListStrategy {
        if let Some(s) = lookup(self.lists, path) {
            return s;
        }
        if let Some(s) = self
            .under_metas(path)
            .find_map(|rest| lookup(OBJECT_META_LISTS, rest))
        {
            return s;
        }
        for rest in self.under_pod_specs(path) {
            if let Some(s) = lookup(POD_SPEC_LISTS, rest) {
                return s;
            }
            if let Some((field, sub)) = rest.split_once('.') {
                if CONTAINER_FIELDS.contains(&field) {
                    if let Some(s) = lookup(CONTAINER_LISTS, sub) {
                        return s;
                    }
                }
            }
        }
        ListStrategy::Replace
    }

    fn retain_keys(&self, path: &str) -> bool {
        self.retain.contains(&path)
            || self
                .under_pod_specs(path)
                .any(|rest| POD_SPEC_RETAIN.contains(&rest))
    }
}

/// The strategy registered for `path` in `table`.
fn lookup(table: &[(&str, ListStrategy)], path: &str) -> Option<ListStrategy> {
    table.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}

/// `path` relative to `prefix`, if it lies below it.
fn below<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    path.strip_prefix(prefix)?.strip_prefix('.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Apply with the metadata of `kind`, expecting success.
    fn patched(kind: &str, original: Value, patch: Value) -> Value {
        let out = apply(&original, &patch, patch_meta_for_kind(kind)).expect("patch applies");
        assert_no_directives(&out);
        out
    }

    /// Apply with the metadata of `kind`, expecting failure.
    fn failed(kind: &str, original: Value, patch: Value) -> PatchError {
        apply(&original, &patch, patch_meta_for_kind(kind)).expect_err("patch must fail")
    }

    /// Directive keys must never leak into a result.
    fn assert_no_directives(value: &Value) {
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    assert!(!k.starts_with('$'), "directive {k} left in result");
                    assert_no_directives(v);
                }
            }
            Value::Array(list) => list.iter().for_each(assert_no_directives),
            _ => {}
        }
    }

    fn pod(containers: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": containers}})
    }

    #[test]
    fn kubectl_apply_changes_image_and_replaces_port() {
        let live = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "web",
                "namespace": "default",
                "generation": 3,
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"old\":true}"}
            },
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "web",
                            "image": "nginx:1.25",
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}]
                        }],
                        "restartPolicy": "Always"
                    }
                }
            },
            "status": {"replicas": 2}
        });
        // What kubectl's three-way diff sends for image nginx:1.26 and port 80 -> 8080.
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":true}"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "web"}],
                "containers": [{
                    "$setElementOrder/ports": [{"containerPort": 8080}],
                    "image": "nginx:1.26",
                    "name": "web",
                    "ports": [{"containerPort": 8080}, {"$patch": "delete", "containerPort": 80}]
                }]
            }}}
        });
        let out = patched("Deployment", live, patch);
        assert_eq!(
            out,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web",
                    "namespace": "default",
                    "generation": 3,
                    "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"new\":true}"}
                },
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "web"}},
                    "template": {
                        "metadata": {"labels": {"app": "web"}},
                        "spec": {
                            "containers": [{
                                "name": "web",
                                "image": "nginx:1.26",
                                "imagePullPolicy": "IfNotPresent",
                                "ports": [{"containerPort": 8080}]
                            }],
                            "restartPolicy": "Always"
                        }
                    }
                },
                "status": {"replicas": 2}
            })
        );
    }

    #[test]
    fn env_merges_by_name() {
        let live = pod(json!([{"name": "app", "image": "a", "env": [
            {"name": "A", "value": "1"},
            {"name": "B", "value": "2"}
        ]}]));
        let patch = json!({"spec": {"containers": [{"name": "app", "env": [
            {"name": "B", "value": "20"},
            {"name": "C", "value": "3"}
        ]}]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "app", "image": "a", "env": [
                {"name": "A", "value": "1"},
                {"name": "B", "value": "20"},
                {"name": "C", "value": "3"}
            ]}])
        );
    }

    #[test]
    fn delete_directive_removes_element() {
        let live = pod(json!([
            {"name": "app", "image": "a", "ports": [{"containerPort": 80}, {"containerPort": 443}]},
            {"name": "sidecar", "image": "s"}
        ]));
        let patch = json!({"spec": {"containers": [
            {"name": "sidecar", "$patch": "delete"},
            {"name": "app", "ports": [{"containerPort": 80, "$patch": "delete"}]}
        ]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "app", "image": "a", "ports": [{"containerPort": 443}]}])
        );
    }

    #[test]
    fn delete_of_absent_element_is_a_no_op() {
        let live = pod(json!([{"name": "app", "image": "a"}]));
        let patch = json!({"spec": {"containers": [{"name": "ghost", "$patch": "delete"}]}});
        let out = patched("Pod", live.clone(), patch);
        assert_eq!(out, live);
    }

    #[test]
    fn finalizers_union_in_kubernetes_order() {
        let live = json!({"metadata": {"name": "x", "finalizers": ["a", "b"]}});
        // Patch values take the patch's order; server-only values follow their live position.
        let out = patched(
            "ConfigMap",
            live.clone(),
            json!({"metadata": {"finalizers": ["b", "c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        // A value unknown to the live list cannot be placed among it, so it leads, as upstream.
        let out = patched(
            "ConfigMap",
            live.clone(),
            json!({"metadata": {"finalizers": ["c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "a", "b"]));
        // Duplicates collapse.
        let out = patched(
            "ConfigMap",
            live,
            json!({"metadata": {"finalizers": ["a", "a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn delete_from_primitive_list() {
        let live = json!({"metadata": {"name": "x", "finalizers": ["a", "b", "c"]}});
        let out = patched(
            "Secret",
            live.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a", "c", "zzz"]}}),
        );
        assert_eq!(out, json!({"metadata": {"name": "x", "finalizers": ["b"]}}));

        // kubectl's form: additions, deletions and the final order together.
        let out = patched(
            "Secret",
            live,
            json!({"metadata": {
                "$setElementOrder/finalizers": ["c", "d", "b"],
                "$deleteFromPrimitiveList/finalizers": ["a"],
                "finalizers": ["d"]
            }}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["c", "d", "b"]));
    }

    #[test]
    fn delete_from_absent_primitive_list_creates_nothing() {
        let live = json!({"metadata": {"name": "x"}});
        let out = patched(
            "Pod",
            live.clone(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out, live);
    }

    #[test]
    fn retain_keys_switches_volume_source() {
        let live = json!({"spec": {
            "containers": [{"name": "app", "image": "a"}],
            "volumes": [
                {"name": "config", "emptyDir": {}},
                {"name": "cache", "emptyDir": {"medium": "Memory"}}
            ]
        }});
        // kubectl sends the null for the dropped source together with $retainKeys.
        let patch = json!({"spec": {"volumes": [{
            "$retainKeys": ["configMap", "name"],
            "configMap": {"name": "app-config"},
            "emptyDir": null,
            "name": "config"
        }]}});
        let out = patched("Pod", live.clone(), patch);
        assert_eq!(
            out["spec"]["volumes"],
            json!([
                {"name": "config", "configMap": {"name": "app-config"}},
                {"name": "cache", "emptyDir": {"medium": "Memory"}}
            ])
        );
        // $retainKeys alone also clears the old source.
        let patch = json!({"spec": {"volumes": [{
            "$retainKeys": ["configMap", "name"],
            "configMap": {"name": "app-config"},
            "name": "config"
        }]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["volumes"][0],
            json!({"name": "config", "configMap": {"name": "app-config"}})
        );
    }

    #[test]
    fn retain_keys_on_deployment_strategy() {
        let live = json!({"spec": {"strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}
        }}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let out = patched("Deployment", live, patch);
        assert_eq!(out, json!({"spec": {"strategy": {"type": "Recreate"}}}));
    }

    #[test]
    fn retain_keys_must_list_patched_fields() {
        let live = json!({"spec": {"strategy": {"type": "Recreate"}}});
        let patch = json!({"spec": {"strategy": {"$retainKeys": ["type"], "rollingUpdate": {"maxSurge": 1}}}});
        let err = failed("Deployment", live.clone(), patch);
        assert!(
            matches!(&err, PatchError::NotInRetainKeys { field, .. } if field == "rollingUpdate"),
            "{err}"
        );
        let err = failed(
            "Deployment",
            live,
            json!({"spec": {"strategy": {"$retainKeys": "type"}}}),
        );
        assert!(
            matches!(err, PatchError::MalformedDirective { .. }),
            "{err}"
        );
    }

    #[test]
    fn null_deletes_a_key() {
        let live = json!({"metadata": {"name": "x", "labels": {"app": "x", "tier": "web"}}, "spec": {"nodeSelector": {"a": "b"}}});
        let patch = json!({"metadata": {"labels": {"tier": null, "missing": null}}, "spec": {"nodeSelector": null}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out,
            json!({"metadata": {"name": "x", "labels": {"app": "x"}}, "spec": {}})
        );
    }

    #[test]
    fn nulls_inside_new_values_are_dropped() {
        let live = json!({"metadata": {"name": "x"}});
        let out = patched(
            "Pod",
            live,
            json!({"metadata": {"labels": {"a": "1", "b": null}}}),
        );
        assert_eq!(
            out,
            json!({"metadata": {"name": "x", "labels": {"a": "1"}}})
        );
    }

    #[test]
    fn non_object_patch_is_an_error() {
        let live = json!({"metadata": {"name": "x"}});
        for patch in [json!([{"op": "add"}]), json!("spec"), json!(3), Value::Null] {
            let err = apply(&live, &patch, patch_meta_for_kind("Pod")).expect_err("rejected");
            assert!(matches!(err, PatchError::PatchNotObject(_)), "{err}");
        }
        let err = apply(&live, &json!([1]), patch_meta_for_kind("Pod")).expect_err("rejected");
        assert_eq!(
            err.to_string(),
            "strategic merge patch must be a JSON object, not a list"
        );
        let err = apply(&json!("x"), &json!({}), patch_meta_for_kind("Pod")).expect_err("rejected");
        assert!(
            matches!(err, PatchError::OriginalNotObject("a string")),
            "{err}"
        );
    }

    #[test]
    fn null_original_is_an_empty_object() {
        let out = apply(
            &Value::Null,
            &json!({"a": {"b": 1}}),
            patch_meta_for_kind("Pod"),
        )
        .expect("applies");
        assert_eq!(out, json!({"a": {"b": 1}}));
    }

    #[test]
    fn list_without_merge_key_is_replaced() {
        let live = json!({"spec": {
            "containers": [{"name": "app", "image": "a", "args": ["--x", "--y"]}],
            "tolerations": [{"key": "a", "operator": "Exists"}, {"key": "b", "operator": "Exists"}]
        }});
        let patch = json!({"spec": {
            "containers": [{"name": "app", "args": ["--z"]}],
            "tolerations": [{"key": "c", "operator": "Exists"}]
        }});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out,
            json!({"spec": {
                "containers": [{"name": "app", "image": "a", "args": ["--z"]}],
                "tolerations": [{"key": "c", "operator": "Exists"}]
            }})
        );
    }

    #[test]
    fn nested_merge_inside_merged_element() {
        let live = pod(json!([{
            "name": "app",
            "image": "a",
            "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
            "env": [{"name": "A", "value": "1"}],
            "volumeMounts": [{"mountPath": "/data", "name": "data"}]
        }]));
        let patch = json!({"spec": {"containers": [{
            "name": "app",
            "resources": {"limits": {"cpu": "2"}},
            "volumeMounts": [{"mountPath": "/data", "readOnly": true}]
        }]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{
                "name": "app",
                "image": "a",
                "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "500m"}},
                "env": [{"name": "A", "value": "1"}],
                "volumeMounts": [{"mountPath": "/data", "name": "data", "readOnly": true}]
            }])
        );
    }

    #[test]
    fn cron_job_pod_template_is_found() {
        let live = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": "job", "image": "j", "env": [{"name": "A", "value": "1"}]}
        ]}}}}}});
        let patch = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [
            {"name": "job", "env": [{"name": "B", "value": "2"}]}
        ]}}}}}});
        let out = patched("CronJob", live, patch);
        // Without $setElementOrder a new element leads, as upstream (see kubectl patch docs).
        assert_eq!(
            out["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "B", "value": "2"}, {"name": "A", "value": "1"}])
        );
    }

    #[test]
    fn replace_directive_on_a_map() {
        let live = pod(
            json!([{"name": "app", "image": "a", "resources": {"limits": {"cpu": "1"}, "requests": {"cpu": "1"}}}]),
        );
        let patch = json!({"spec": {"containers": [{"name": "app", "resources": {"$patch": "replace", "limits": {"memory": "1Gi"}}}]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["containers"][0]["resources"],
            json!({"limits": {"memory": "1Gi"}})
        );
    }

    #[test]
    fn replace_directive_in_a_list() {
        let live = pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch =
            json!({"spec": {"containers": [{"name": "c", "image": "c"}, {"$patch": "replace"}]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c", "image": "c"}])
        );

        let live = json!({"metadata": {"finalizers": ["a", "b"]}});
        let out = patched(
            "Pod",
            live,
            json!({"metadata": {"finalizers": ["c", {"$patch": "replace"}]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["c"]));
    }

    #[test]
    fn delete_directive_on_a_map() {
        let live = json!({"spec": {"securityContext": {"runAsUser": 1000}, "hostname": "h"}});
        let out = patched(
            "Pod",
            live,
            json!({"spec": {"securityContext": {"$patch": "delete"}}}),
        );
        assert_eq!(out, json!({"spec": {"hostname": "h"}}));
    }

    #[test]
    fn directives_at_the_root() {
        let live = json!({"metadata": {"name": "x"}, "data": {"a": "1"}});
        let out = patched(
            "ConfigMap",
            live.clone(),
            json!({"$patch": "replace", "metadata": {"name": "y"}}),
        );
        assert_eq!(out, json!({"metadata": {"name": "y"}}));
        let out = patched("ConfigMap", live, json!({"$patch": "delete"}));
        assert_eq!(out, json!({}));
    }

    #[test]
    fn merge_directive_is_the_default() {
        let live = json!({"metadata": {"labels": {"a": "1"}}});
        let out = patched(
            "Pod",
            live,
            json!({"metadata": {"labels": {"$patch": "merge", "b": "2"}}}),
        );
        assert_eq!(out, json!({"metadata": {"labels": {"a": "1", "b": "2"}}}));
    }

    #[test]
    fn invalid_directive_is_an_error() {
        let live = json!({"metadata": {"labels": {"a": "1"}}});
        let err = failed(
            "Pod",
            live,
            json!({"metadata": {"labels": {"$patch": "explode"}}}),
        );
        assert_eq!(
            err.to_string(),
            "invalid $patch directive \"explode\" at metadata.labels: expected \"replace\", \"delete\" or \"merge\""
        );
    }

    #[test]
    fn merge_key_is_required() {
        let live = pod(json!([{"name": "app", "image": "a"}]));
        let err = failed(
            "Pod",
            live.clone(),
            json!({"spec": {"containers": [{"image": "b"}]}}),
        );
        assert!(
            matches!(err, PatchError::MissingMergeKey { key: "name", .. }),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "an element of the list at spec.containers lacks its merge key \"name\""
        );
        let err = failed(
            "Pod",
            live,
            json!({"spec": {"containers": [{"$patch": "delete"}]}}),
        );
        assert!(matches!(err, PatchError::MissingMergeKey { .. }), "{err}");
    }

    #[test]
    fn mixed_and_nested_lists_are_errors() {
        let live = json!({"metadata": {"finalizers": ["a"]}});
        let err = failed(
            "Pod",
            live.clone(),
            json!({"metadata": {"finalizers": [{"x": 1}]}}),
        );
        assert!(matches!(err, PatchError::MixedList { .. }), "{err}");
        let err = failed("Pod", live, json!({"metadata": {"finalizers": [["a"]]}}));
        assert!(matches!(err, PatchError::ListOfLists { .. }), "{err}");
    }

    #[test]
    fn set_element_order_keeps_server_only_elements_in_place() {
        // An injected sidecar (not in the applied config) stays where the server put it.
        let live = pod(json!([
            {"name": "proxy", "image": "p"},
            {"name": "a", "image": "a"},
            {"name": "b", "image": "b"}
        ]));
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}, {"name": "c"}],
            "containers": [{"name": "c", "image": "c"}]
        }});
        let out = patched("Pod", live, patch);
        let names: Vec<&str> = out["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["proxy", "b", "a", "c"]);
    }

    #[test]
    fn set_element_order_alone_reorders() {
        let live = pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch =
            json!({"spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "b", "image": "b"}, {"name": "a", "image": "a"}])
        );
    }

    #[test]
    fn set_element_order_must_agree_with_patch_list() {
        let live = pod(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch = json!({"spec": {
            "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
            "containers": [{"name": "b", "image": "b2"}, {"name": "a", "image": "a2"}]
        }});
        let err = failed("Pod", live, patch);
        assert!(matches!(err, PatchError::OrderMismatch { .. }), "{err}");
    }

    #[test]
    fn new_list_is_stored_as_given_without_directives() {
        let live = pod(json!([{"name": "dns", "image": "d"}]));
        let patch = json!({"spec": {"containers": [{
            "name": "dns",
            "$setElementOrder/ports": [{"containerPort": 53}, {"containerPort": 53}],
            "ports": [
                {"containerPort": 53, "protocol": "TCP"},
                {"containerPort": 53, "protocol": "UDP"}
            ],
            "env": [{"name": "A", "value": "1", "valueFrom": null}]
        }]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["spec"]["containers"],
            json!([{
                "name": "dns",
                "image": "d",
                "ports": [
                    {"containerPort": 53, "protocol": "TCP"},
                    {"containerPort": 53, "protocol": "UDP"}
                ],
                "env": [{"name": "A", "value": "1"}]
            }])
        );
    }

    #[test]
    fn type_change_replaces_value() {
        let live = json!({"data": {"a": [1, 2]}, "spec": {"x": {"y": 1}}});
        let out = patched(
            "ConfigMap",
            live,
            json!({"data": {"a": {"k": "v"}}, "spec": {"x": "flat"}}),
        );
        assert_eq!(
            out,
            json!({"data": {"a": {"k": "v"}}, "spec": {"x": "flat"}})
        );
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let live = json!({"metadata": {"ownerReferences": [
            {"uid": "1", "kind": "ReplicaSet", "name": "rs"}
        ]}});
        let patch = json!({"metadata": {"ownerReferences": [
            {"uid": "1", "controller": true},
            {"uid": "2", "kind": "Foo", "name": "f"}
        ]}});
        let out = patched("Pod", live, patch);
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid": "1", "kind": "ReplicaSet", "name": "rs", "controller": true}, {"uid": "2", "kind": "Foo", "name": "f"}])
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let live = json!({"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}});
        let patch = json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}});
        let out = patched("Service", live, patch);
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "targetPort": 9090}, {"port": 443, "targetPort": 8443}])
        );
    }

    #[test]
    fn node_status_merges_and_taints_replace() {
        let live = json!({
            "spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "DiskPressure", "status": "False"}
            ]}
        });
        let patch = json!({
            "spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]}
        });
        let out = patched("Node", live, patch);
        assert_eq!(
            out,
            json!({
                "spec": {"taints": [{"key": "b", "effect": "NoSchedule"}]},
                "status": {"conditions": [
                    {"type": "Ready", "status": "False"},
                    {"type": "DiskPressure", "status": "False"}
                ]}
            })
        );
    }

    #[test]
    fn unknown_kind_merges_metadata_only() {
        let live = json!({"metadata": {"finalizers": ["a"]}, "spec": {"items": [{"name": "x"}]}});
        let patch = json!({"metadata": {"finalizers": ["b"]}, "spec": {"items": [{"name": "y"}]}});
        let out = patched("Widget", live, patch);
        assert_eq!(
            out,
            json!({"metadata": {"finalizers": ["b", "a"]}, "spec": {"items": [{"name": "y"}]}})
        );
    }

    #[test]
    fn field_order_is_preserved() {
        let live = json!({"a": 1, "b": 2, "c": 3});
        let out = patched("ConfigMap", live, json!({"b": null, "a": 10, "d": 4}));
        assert_eq!(out.to_string(), r#"{"a":10,"c":3,"d":4}"#);
    }

    #[test]
    fn metadata_table() {
        use ListStrategy::Replace;
        let cases: &[(&str, &str, ListStrategy)] = &[
            ("Pod", "metadata.ownerReferences", MergeByKey("uid")),
            ("Pod", "metadata.finalizers", MergePrimitives),
            ("Pod", "metadata.managedFields", Replace),
            ("Pod", "spec.containers", MergeByKey("name")),
            (
                "Pod",
                "spec.initContainers.ports",
                MergeByKey("containerPort"),
            ),
            ("Pod", "spec.ephemeralContainers.env", MergeByKey("name")),
            (
                "Pod",
                "spec.containers.volumeMounts",
                MergeByKey("mountPath"),
            ),
            (
                "Pod",
                "spec.containers.volumeDevices",
                MergeByKey("devicePath"),
            ),
            ("Pod", "spec.containers.args", Replace),
            ("Pod", "spec.containers.resizePolicy", Replace),
            ("Pod", "spec.volumes", MergeByKey("name")),
            ("Pod", "spec.imagePullSecrets", MergeByKey("name")),
            ("Pod", "spec.hostAliases", MergeByKey("ip")),
            (
                "Pod",
                "spec.topologySpreadConstraints",
                MergeByKey("topologyKey"),
            ),
            ("Pod", "spec.resourceClaims", MergeByKey("name")),
            ("Pod", "spec.schedulingGates", MergeByKey("name")),
            ("Pod", "spec.tolerations", Replace),
            ("Pod", "status.conditions", MergeByKey("type")),
            ("Pod", "status.podIPs", MergeByKey("ip")),
            ("Pod", "status.containerStatuses", Replace),
            (
                "Deployment",
                "spec.template.spec.containers.ports",
                MergeByKey("containerPort"),
            ),
            (
                "Deployment",
                "spec.template.metadata.finalizers",
                MergePrimitives,
            ),
            ("Deployment", "status.conditions", MergeByKey("type")),
            ("Deployment", "spec.containers", Replace),
            (
                "ReplicaSet",
                "spec.template.spec.volumes",
                MergeByKey("name"),
            ),
            ("DaemonSet", "status.conditions", MergeByKey("type")),
            (
                "StatefulSet",
                "spec.template.spec.initContainers",
                MergeByKey("name"),
            ),
            (
                "StatefulSet",
                "spec.volumeClaimTemplates.metadata.ownerReferences",
                MergeByKey("uid"),
            ),
            (
                "Job",
                "spec.template.spec.containers.env",
                MergeByKey("name"),
            ),
            ("Job", "status.conditions", MergeByKey("type")),
            (
                "CronJob",
                "spec.jobTemplate.spec.template.spec.containers",
                MergeByKey("name"),
            ),
            ("CronJob", "spec.template.spec.containers", Replace),
            ("Service", "spec.ports", MergeByKey("port")),
            ("Service", "status.conditions", MergeByKey("type")),
            ("Node", "spec.taints", Replace),
            ("Node", "spec.podCIDRs", MergePrimitives),
            ("Node", "status.addresses", MergeByKey("type")),
            ("Node", "status.conditions", MergeByKey("type")),
            ("Namespace", "status.conditions", MergeByKey("type")),
            (
                "PersistentVolumeClaim",
                "status.conditions",
                MergeByKey("type"),
            ),
            ("ServiceAccount", "secrets", MergeByKey("name")),
            ("ServiceAccount", "imagePullSecrets", Replace),
            ("Endpoints", "subsets", Replace),
            ("EndpointSlice", "metadata.finalizers", MergePrimitives),
            ("ClusterRole", "rules", Replace),
            ("Widget", "metadata.ownerReferences", MergeByKey("uid")),
            ("Widget", "spec.containers", Replace),
        ];
        for (kind, path, want) in cases {
            assert_eq!(
                patch_meta_for_kind(kind).list_strategy(path),
                *want,
                "{kind} {path}"
            );
        }
        let deployment = patch_meta_for_kind("Deployment");
        assert!(deployment.retain_keys("spec.strategy"));
        assert!(deployment.retain_keys("spec.template.spec.volumes"));
        assert!(!deployment.retain_keys("spec.template.spec.containers"));
        assert!(patch_meta_for_kind("Pod").retain_keys("spec.resourceClaims"));
        assert!(!patch_meta_for_kind("DaemonSet").retain_keys("spec.updateStrategy"));
    }
}
