//! The Kubernetes-compatible REST API.

pub mod blobs;
pub mod client;
pub mod discovery;
pub mod error;
pub mod handlers;
pub mod metrics_api;
pub mod object;
pub mod protobuf;
pub mod proxy;
pub mod resources;
pub mod selector;
pub mod serviceaccount_admission;
pub mod services;
pub mod strategic;
pub mod table;
pub mod tokens;
pub mod validation;
pub mod watch;

use crate::auth::Identity;
use crate::metrics::Metrics;
use crate::store::Store;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use error::ApiError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tunables of the API layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// How often watches with `allowWatchBookmarks` get a bookmark.
    pub bookmark_interval: Duration,
    /// Default watch timeout when the client gives none.
    pub default_watch_timeout: Duration,
    /// How often the HorizontalPodAutoscaler controller evaluates each HPA.
    pub hpa_sync_period: Duration,
    /// Node IPAM: cluster CIDRs and node mask sizes.
    pub ipam: crate::controllers::nodeipam::IpamConfig,
    /// Node lifecycle: heartbeat grace and default toleration seconds.
    pub node_lifecycle: crate::controllers::nodelifecycle::LifecycleConfig,
    /// Service CIDRs, node-port range and the API's advertise address.
    pub services: services::ServiceConfig,
    /// Bearer-token authentication: token file and service-account issuer.
    pub authn: crate::auth::AuthnConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body_bytes: 3 * 1024 * 1024,
            bookmark_interval: Duration::from_secs(60),
            default_watch_timeout: Duration::from_secs(1800),
            hpa_sync_period: Duration::from_secs(15),
            ipam: Default::default(),
            node_lifecycle: Default::default(),
            services: Default::default(),
            authn: Default::default(),
        }
    }
}

/// Shared state of the API server.
pub struct AppState {
    /// The object store.
    pub store: Arc<dyn Store>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Configuration.
    pub config: ApiConfig,
    /// Extension points wired by the server (plugin checks, blob store).
    pub hooks: Hooks,
}

/// Checks a Plugin object's module: `(name, kind, digest) -> Err(reason)` when the
/// module is missing or is not a component of the world for `kind`.
pub type PluginCheck = Arc<dyn Fn(&str, &str, &str) -> Result<(), String> + Send + Sync>;

/// Optional parts of the API server, absent in minimal test setups.
#[derive(Default, Clone)]
pub struct Hooks {
    /// Content-addressed store for plugin modules (`/shoal/v1/blobs/<digest>`).
    pub blobs: Option<crate::blobs::BlobStore>,
    /// Validates plugin modules at Plugin create/update.
    pub plugin_check: Option<PluginCheck>,
    /// Where the cluster's key material lives (service-account token signing).
    pub pki_dir: Option<std::path::PathBuf>,
    /// The latest resource usage report of each node (`metrics.k8s.io`).
    pub node_metrics: metrics_api::NodeMetricsStore,
    /// Service cluster-IP and node-port allocators (built from the store on first use).
    pub services: services::ServiceAllocator,
    /// Admission plugins (host/src/admission), fed by the Plugin controller.
    pub admission: Option<Arc<crate::admission::WasmChain>>,
    /// Bearer tokens and service-account tokens (TokenRequest, TokenReview).
    pub authn: Option<Arc<crate::auth::Authenticator>>,
    /// The authorization chain (host/src/authz); `None` allows everything.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
}

/// The API router. Health endpoints are open; everything else needs an identity.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .route("/livez", get(health))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/shoal/v1/blobs/{digest}",
            get(blobs::get_blob)
                .head(blobs::head_blob)
                .put(blobs::put_blob),
        )
        .route(
            "/shoal/v1/nodes/{node}/metrics",
            axum::routing::put(metrics_api::put_node_metrics),
        )
        // The built-in OCI registry (/v2/...), authenticated like the API.
        .merge(crate::registry::routes())
        .fallback(api)
        // Authorization of every authenticated request (host/src/authz).
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::authz::middleware,
        ))
        .with_state(state)
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    // Ready when the store answers a read.
    match state.store.get("/core/namespaces/default") {
        Ok(_) => "ok".into_response(),
        Err(e) => ApiError::Unavailable(format!("store not ready: {e}")).into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>, req: Request) -> Response {
    if req.extensions().get::<Identity>().is_none() {
        return ApiError::Unauthorized.into_response();
    }
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

async fn api(State(state): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let started = Instant::now();
    let identity = req.extensions().get::<Identity>().cloned();
    let Some(identity) = identity else {
        return ApiError::Unauthorized.into_response();
    };
    // metrics.k8s.io is served from memory, like an aggregated APIService.
    if let Some(resp) = metrics_api::route(&state, &req) {
        return resp;
    }
    let (verb, resource, resp) = handlers::handle(&state, identity, req).await;
    let code = resp.status().as_u16();
    if verb != "watch" {
        state
            .metrics
            .observe_request(&verb, &resource, code, started.elapsed());
    } else {
        state
            .metrics
            .observe_request(&verb, &resource, code, Duration::ZERO);
    }
    resp
}
