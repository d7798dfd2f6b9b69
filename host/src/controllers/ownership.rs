//! Controller ownership through `ownerReferences`: who controls an object,
//! adopting matching orphans and releasing children that stopped matching
//! (Kubernetes' ControllerRefManager), and an index of selectors so that a
//! changed orphan wakes the controllers that could adopt it.

pub use super::pods::{controller_of, controller_ref};
use super::runtime::{Mapper, ObjectKey};
use crate::api::client::LocalClient;
use crate::api::error::{ApiError, ApiResult};
use crate::api::object;
use crate::api::resources::ResourceInfo;
use crate::api::selector::LabelSelector;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// UID of the object's controller, if any.
pub fn controller_uid(obj: &Value) -> Option<&str> {
    controller_of(obj)?.get("uid")?.as_str()
}

/// The object's labels.
pub fn labels(obj: &Value) -> Option<&serde_json::Map<String, Value>> {
    obj.pointer("/metadata/labels").and_then(Value::as_object)
}

/// How a controller sees one candidate child.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Controlled by us and still selected.
    Owned,
    /// No controller and selected: ours to adopt.
    Adopt,
    /// Controlled by us but no longer selected: to release.
    Release,
    /// Not ours.
    Ignore,
}

/// Decide what `owner_uid` (with `selector`) should do with `child`.
/// A deleting owner adopts nothing; an empty selector claims nothing new.
pub fn claim(
    child: &Value,
    owner_uid: &str,
    selector: &LabelSelector,
    owner_deleting: bool,
) -> Claim {
    let matches = selector.matches(labels(child));
    match controller_uid(child) {
        Some(u) if u == owner_uid => {
            if matches {
                Claim::Owned
            } else {
                Claim::Release
            }
        }
        Some(_) => Claim::Ignore,
        None if matches
            && !owner_deleting
            && !selector.is_empty()
            && child.pointer("/metadata/deletionTimestamp").is_none() =>
        {
            Claim::Adopt
        }
        None => Claim::Ignore,
    }
}

fn owner_refs(child: &Value) -> Vec<Value> {
    child
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Make `owner_ref` the child's controller. The patch pins the child's
/// resourceVersion, so a child changed since it was read is not adopted blindly.
pub async fn adopt(
    client: &LocalClient,
    info: &'static ResourceInfo,
    child: &Value,
    owner_ref: Value,
) -> ApiResult<Value> {
    let mut refs = owner_refs(child);
    refs.retain(|r| r["uid"] != owner_ref["uid"]);
    refs.push(owner_ref);
    patch_refs(client, info, child, Value::Array(refs)).await
}

/// Drop the reference to `owner_uid` from the child. Ok(None) if the child is gone.
pub async fn release(
    client: &LocalClient,
    info: &'static ResourceInfo,
    child: &Value,
    owner_uid: &str,
) -> ApiResult<Option<Value>> {
    let mut refs = owner_refs(child);
    refs.retain(|r| r["uid"] != owner_uid);
    let refs = if refs.is_empty() {
        Value::Null
    } else {
        Value::Array(refs)
    };
    match patch_refs(client, info, child, refs).await {
        Ok(v) => Ok(Some(v)),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

async fn patch_refs(
    client: &LocalClient,
    info: &'static ResourceInfo,
    child: &Value,
    refs: Value,
) -> ApiResult<Value> {
    let ns = object::meta_str(child, "namespace");
    let name = object::meta_str(child, "name").unwrap_or("");
    let patch = json!({"metadata": {
        "ownerReferences": refs,
        "resourceVersion": object::meta_str(child, "resourceVersion"),
    }});
    client.merge_patch(info, ns, name, &patch).await
}

/// Selectors of one kind of controller, by namespace and name, kept by its
/// reconciler so that a watch event for an orphan maps to the controllers
/// whose selector matches it.
#[derive(Clone, Default)]
pub struct SelectorIndex {
    inner: Arc<RwLock<HashMap<String, HashMap<String, LabelSelector>>>>,
}

impl SelectorIndex {
    /// Remember (or replace) a controller's selector.
    pub fn set(&self, ns: &str, name: &str, selector: LabelSelector) {
        let mut m = self.inner.write().expect("index lock");
        m.entry(ns.to_string())
            .or_default()
            .insert(name.to_string(), selector);
    }

    /// Forget a controller.
    pub fn remove(&self, ns: &str, name: &str) {
        let mut m = self.inner.write().expect("index lock");
        if let Some(names) = m.get_mut(ns) {
            names.remove(name);
            if names.is_empty() {
                m.remove(ns);
            }
        }
    }

    /// Controllers in `ns` whose (non-empty) selector matches `obj`'s labels.
    pub fn matching(&self, ns: &str, obj: &Value) -> Vec<String> {
        let m = self.inner.read().expect("index lock");
        m.get(ns)
            .into_iter()
            .flatten()
            .filter(|(_, s)| !s.is_empty() && s.matches(labels(obj)))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A watch mapper for children: their controller of `owner_kind`, or for
    /// orphans every indexed controller that selects them.
    pub fn child_mapper(&self, owner_kind: &'static str) -> Mapper {
        let index = self.clone();
        Arc::new(move |o: &Value| {
            let ns = object::meta_str(o, "namespace").unwrap_or("").to_string();
            match controller_of(o) {
                Some(r) if r["kind"] == owner_kind => r["name"]
                    .as_str()
                    .map(|n| ObjectKey {
                        namespace: Some(ns.clone()),
                        name: n.to_string(),
                    })
                    .into_iter()
                    .collect(),
                Some(_) => Vec::new(),
                None => index
                    .matching(&ns, o)
                    .into_iter()
                    .map(|name| ObjectKey {
                        namespace: Some(ns.clone()),
                        name,
                    })
                    .collect(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap()
    }

    #[test]
    fn claims() {
        let s = sel("app=web");
        let orphan = json!({"metadata": {"labels": {"app": "web"}}});
        let mine = json!({"metadata": {"labels": {"app": "web"}, "ownerReferences": [{"uid": "u1", "controller": true}]}});
        let mine_relabelled = json!({"metadata": {"labels": {"app": "db"}, "ownerReferences": [{"uid": "u1", "controller": true}]}});
        let theirs = json!({"metadata": {"labels": {"app": "web"}, "ownerReferences": [{"uid": "u2", "controller": true}]}});
        assert_eq!(claim(&orphan, "u1", &s, false), Claim::Adopt);
        assert_eq!(claim(&orphan, "u1", &s, true), Claim::Ignore);
        assert_eq!(claim(&mine, "u1", &s, false), Claim::Owned);
        assert_eq!(claim(&mine_relabelled, "u1", &s, false), Claim::Release);
        assert_eq!(claim(&theirs, "u1", &s, false), Claim::Ignore);
        assert_eq!(
            claim(&orphan, "u1", &LabelSelector::default(), false),
            Claim::Ignore
        );
    }

    #[test]
    fn mapper_finds_controllers_of_orphans() {
        let idx = SelectorIndex::default();
        idx.set("d", "web", sel("app=web"));
        idx.set("d", "db", sel("app=db"));
        let m = idx.child_mapper("ReplicaSet");
        let orphan = json!({"metadata": {"namespace": "d", "labels": {"app": "web"}}});
        assert_eq!(
            m(&orphan),
            vec![ObjectKey {
                namespace: Some("d".into()),
                name: "web".into()
            }]
        );
        let owned = json!({"metadata": {"namespace": "d", "labels": {"app": "web"}, "ownerReferences": [{"kind": "ReplicaSet", "name": "x", "uid": "1", "controller": true}]}});
        assert_eq!(
            m(&owned),
            vec![ObjectKey {
                namespace: Some("d".into()),
                name: "x".into()
            }]
        );
        idx.remove("d", "web");
        assert!(m(&orphan).is_empty());
    }
}
