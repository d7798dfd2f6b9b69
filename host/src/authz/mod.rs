//! Authorization: who may do what.
//!
//! Every authenticated request passes [`middleware`], which derives Kubernetes'
//! authorizer attributes from the request (verb, API group, resource,
//! subresource, namespace, name, or the path of a non-resource URL) and asks
//! the chain:
//!
//! 1. `system:masters` → allow;
//! 2. authorizer plugins (Plugin objects of kind `authorizer`, RBAC among
//!    them), in name order: the first allow or deny wins, no-opinion passes on;
//! 3. the node authorizer ([`node`]) for `system:node:<name>` identities;
//! 4. otherwise deny, with Kubernetes' 403 message.
//!
//! The same chain answers SubjectAccessReviews ([`review`]) and the escalation
//! checks on Role and binding writes ([`escalation`]).

pub mod bootstrap;
pub mod escalation;
pub mod node;
pub mod pool;
pub mod request;
pub mod review;

use crate::api::AppState;
use crate::auth::Identity;
use crate::plugin::{Attributes, Decision};
use crate::plugin_objects::PluginSet;
use crate::store::Store;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use pool::Pools;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The answer of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed, with the reason (which authorizer, which binding).
    Allow(String),
    /// Denied; the reason is empty when nobody allowed it.
    Deny(String),
}

impl Outcome {
    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self, Outcome::Allow(_))
    }
}

/// The authorization chain of one server.
pub struct Authorizer {
    store: Arc<dyn Store>,
    pools: Pools,
}

impl Authorizer {
    /// A chain with no plugins yet (masters and nodes only) until
    /// [`Authorizer::start`] feeds it the plugin set.
    pub fn new(store: Arc<dyn Store>) -> Arc<Authorizer> {
        Arc::new(Authorizer {
            store,
            pools: Pools::new(),
        })
    }

    /// Consume the published plugin set: keep pools of the `authorizer`
    /// plugins, fed with the kinds they ask for.
    pub fn start(self: &Arc<Self>, plugins: watch::Receiver<Arc<PluginSet>>) {
        let me = self.clone();
        tokio::spawn(async move { pool::feeder(me, plugins).await });
    }

    /// Wait (at most `limit`) until the first set of authorizer plugins is live,
    /// so a client that sees the server ready sees RBAC decisions too.
    pub async fn wait_ready(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.pools.ready()).await;
    }

    /// The store the node authorizer reads the pod graph from.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Decide one request for `id`.
    pub fn authorize(&self, id: &Identity, attrs: &Attributes) -> Outcome {
        if id.groups.iter().any(|g| g == "system:masters") {
            return Outcome::Allow("user is in system:masters".into());
        }
        match self.pools.decide(attrs) {
            Some((Decision::Allow, reason)) => return Outcome::Allow(reason),
            Some((Decision::Deny, reason)) => return Outcome::Deny(reason),
            _ => {}
        }
        if let Some(node) = node::node_name(id) {
            if node::allows(self.store.as_ref(), node, attrs) {
                return Outcome::Allow(format!("node authorizer: allowed for node {node:?}"));
            }
        }
        Outcome::Deny(String::new())
    }

    /// Whether `id` may do `verb` on the resource; convenience for checks.
    pub fn allows(&self, id: &Identity, attrs: &Attributes) -> bool {
        self.authorize(id, attrs).allowed()
    }
}

/// Attributes of `id` for a resource request.
#[allow(clippy::too_many_arguments)]
pub fn resource_attrs(
    id: &Identity,
    verb: &str,
    namespace: &str,
    group: &str,
    resource: &str,
    subresource: &str,
    name: &str,
) -> Attributes {
    Attributes {
        user: id.user.clone(),
        groups: id.groups.clone(),
        verb: verb.into(),
        resource_request: true,
        namespace: namespace.into(),
        api_group: group.into(),
        resource: resource.into(),
        subresource: subresource.into(),
        name: name.into(),
        path: String::new(),
    }
}

/// Attributes of `id` for a non-resource URL.
pub fn path_attrs(id: &Identity, verb: &str, path: &str) -> Attributes {
    Attributes {
        user: id.user.clone(),
        groups: id.groups.clone(),
        verb: verb.into(),
        resource_request: false,
        namespace: String::new(),
        api_group: String::new(),
        resource: String::new(),
        subresource: String::new(),
        name: String::new(),
        path: path.into(),
    }
}

/// Kubernetes' forbidden message for `attrs` (without the reason).
pub fn forbidden_message(attrs: &Attributes) -> String {
    if !attrs.resource_request {
        return format!(
            "User {:?} cannot {} path {:?}",
            attrs.user, attrs.verb, attrs.path
        );
    }
    let resource = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    if attrs.namespace.is_empty() {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} at the cluster scope",
            attrs.user, attrs.verb, resource, attrs.api_group
        )
    } else {
        format!(
            "User {:?} cannot {} resource {:?} in API group {:?} in the namespace {:?}",
            attrs.user, attrs.verb, resource, attrs.api_group, attrs.namespace
        )
    }
}

/// A 403 `Status` for the resource (or non-resource URL) in `attrs`, with
/// `message` after Kubernetes' `<resource> "<name>" is forbidden: ` prefix.
pub fn forbidden(attrs: &Attributes, message: &str) -> Response {
    let qualified = if attrs.api_group.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}.{}", attrs.resource, attrs.api_group)
    };
    let full = if !attrs.resource_request || qualified.is_empty() {
        format!("forbidden: {message}")
    } else if attrs.name.is_empty() {
        format!("{qualified} is forbidden: {message}")
    } else {
        format!("{qualified} {:?} is forbidden: {message}", attrs.name)
    };
    let mut details = json!({"kind": attrs.resource});
    if !attrs.name.is_empty() {
        details["name"] = json!(attrs.name);
    }
    if !attrs.api_group.is_empty() {
        details["group"] = json!(attrs.api_group);
    }
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": full, "reason": "Forbidden", "details": details, "code": 403,
    });
    (
        StatusCode::FORBIDDEN,
        [(http::header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&body).expect("serializes"),
    )
        .into_response()
}

/// The 403 for a denied request: the standard message plus the reason.
pub fn denied(attrs: &Attributes, reason: &str) -> Response {
    let mut msg = forbidden_message(attrs);
    if !reason.is_empty() {
        msg = format!("{msg}: {reason}");
    }
    forbidden(attrs, &msg)
}

/// The authorization layer in front of every route. Requests without an
/// identity pass through (each route answers 401 or serves health checks).
pub async fn middleware(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(authz) = state.hooks.authz.clone() else {
        return next.run(req).await;
    };
    let Some(id) = req.extensions().get::<Identity>().cloned() else {
        return next.run(req).await;
    };
    let (id, mut req) = match request::impersonate(&authz, id, req) {
        Ok(x) => x,
        Err(resp) => return *resp,
    };
    let attrs = request::attributes(&id, req.method(), req.uri());
    if let Outcome::Deny(reason) = authz.authorize(&id, &attrs) {
        if node::node_name(&id).is_some() {
            // What an agent is refused is worth seeing in the server log.
            tracing::info!(user = %id.user, verb = %attrs.verb, resource = %attrs.resource,
                sub = %attrs.subresource, name = %attrs.name, ns = %attrs.namespace,
                path = %attrs.path, "node request forbidden");
        } else {
            tracing::debug!(user = %id.user, verb = %attrs.verb, resource = %attrs.resource,
                path = %attrs.path, "forbidden");
        }
        return denied(&attrs, &reason);
    }
    if attrs.resource_request && attrs.api_group == "authorization.k8s.io" {
        return review::serve(&state, &authz, &id, &attrs, req).await;
    }
    // Writes whose effect depends on the body: RBAC objects (escalation) and
    // what a node may create (NodeRestriction).
    if escalation::applies(&attrs) || node::restricts(&id, &attrs) {
        let (parts, body) = req.into_parts();
        let limit = state.config.max_body_bytes;
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            return crate::api::error::ApiError::TooLarge(format!(
                "the request body is too large: the limit is {limit} bytes"
            ))
            .into_response();
        };
        let ct = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        if escalation::applies(&attrs) {
            if let Err(resp) = escalation::check(&state, &authz, &id, &attrs, &ct, &bytes) {
                return *resp;
            }
        }
        if let Err(resp) = node::admit(&id, &attrs, &ct, &bytes) {
            return *resp;
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(id);
    next.run(req).await
}
