//! An in-process API client for controllers: the same create/update/patch/
//! delete/list/watch semantics (validation, defaulting, optimistic
//! concurrency) a remote client gets over HTTP, without the HTTP.

use super::error::{ApiError, ApiResult};
use super::handlers::{self, Query, Target};
use super::object;
use super::resources::ResourceInfo;
use super::selector::LabelSelector;
use super::AppState;
use crate::store::{Revision, WatchStream};
use serde_json::Value;
use std::sync::Arc;

/// A client bound to the server's state.
#[derive(Clone)]
pub struct LocalClient {
    state: Arc<AppState>,
}

fn target(
    r: &'static ResourceInfo,
    ns: Option<&str>,
    name: Option<&str>,
    sub: Option<&str>,
) -> Target {
    Target {
        info: r,
        namespace: if r.namespaced {
            ns.map(str::to_string)
        } else {
            None
        },
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
    }
}

impl LocalClient {
    /// A client for `state`.
    pub fn new(state: Arc<AppState>) -> LocalClient {
        LocalClient { state }
    }

    /// The server state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Get one object, or None.
    pub fn get(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> ApiResult<Option<Value>> {
        match self
            .state
            .store
            .get(&r.key(if r.namespaced { ns } else { None }, name))?
        {
            Some(kv) => Ok(Some(object::from_store(&kv)?)),
            None => Ok(None),
        }
    }

    /// List objects (in a namespace, or all) matching an optional label selector,
    /// with the revision of the list.
    pub fn list(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        selector: Option<&LabelSelector>,
    ) -> ApiResult<(Vec<Value>, Revision)> {
        let page = self.state.store.list(&r.prefix(ns), None, 0, None)?;
        let mut out = Vec::with_capacity(page.items.len());
        for kv in &page.items {
            let obj = object::from_store(kv)?;
            if let Some(sel) = selector {
                let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
                if !sel.matches(labels) {
                    continue;
                }
            }
            out.push(obj);
        }
        Ok((out, page.revision))
    }

    /// Create an object.
    pub async fn create(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        obj: Value,
    ) -> ApiResult<Value> {
        handlers::create(&self.state, &target(r, ns, None, None), obj, &Query::new()).await
    }

    /// Replace an object (its resourceVersion, if set, must match).
    pub async fn update(&self, r: &'static ResourceInfo, obj: Value) -> ApiResult<Value> {
        self.put(r, obj, None).await
    }

    /// Replace an object's status (its resourceVersion, if set, must match).
    pub async fn update_status(&self, r: &'static ResourceInfo, obj: Value) -> ApiResult<Value> {
        self.put(r, obj, Some("status")).await
    }

    async fn put(
        &self,
        r: &'static ResourceInfo,
        obj: Value,
        sub: Option<&str>,
    ) -> ApiResult<Value> {
        let ns = object::meta_str(&obj, "namespace").map(str::to_string);
        let name = object::meta_str(&obj, "name")
            .map(str::to_string)
            .ok_or_else(|| ApiError::BadRequest("object has no name".into()))?;
        let t = target(r, ns.as_deref(), Some(&name), sub);
        handlers::update(&self.state, &t, obj, &Query::new())
            .await
            .map(|(_, v)| v)
    }

    /// Apply a JSON merge patch (retried on conflict unless it pins a resourceVersion).
    pub async fn merge_patch(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> ApiResult<Value> {
        let body = serde_json::to_vec(patch).expect("a Value always serializes");
        let t = target(r, ns, Some(name), None);
        handlers::patch(
            &self.state,
            &t,
            "application/merge-patch+json",
            &body,
            &Query::new(),
        )
        .await
    }

    /// Apply a JSON merge patch to the status subresource.
    pub async fn merge_patch_status(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> ApiResult<Value> {
        let body = serde_json::to_vec(patch).expect("a Value always serializes");
        let t = target(r, ns, Some(name), Some("status"));
        handlers::patch(
            &self.state,
            &t,
            "application/merge-patch+json",
            &body,
            &Query::new(),
        )
        .await
    }

    /// Delete an object with DeleteOptions (`{}` for defaults). NotFound is Ok(false).
    pub async fn delete(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &Value,
    ) -> ApiResult<bool> {
        let t = target(r, ns, Some(name), None);
        match handlers::delete(&self.state, &t, opts, &Query::new()).await {
            Ok(_) => Ok(true),
            Err(ApiError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Watch raw store events for a resource (optionally one namespace) after `rev`.
    pub fn watch(
        &self,
        r: &'static ResourceInfo,
        ns: Option<&str>,
        rev: Revision,
    ) -> ApiResult<WatchStream> {
        Ok(self.state.store.watch(&r.prefix(ns), rev)?)
    }
}
