//! The built-in OCI distribution registry, served by the API server on the same
//! address and authenticated like the API (client certificates): `/v2/`,
//! manifests and blobs (GET/HEAD), chunked and monolithic blob uploads, manifest
//! push, tag lists and the catalog.
//!
//! Blobs (layers, configs and manifests alike) live in the host's
//! content-addressed [`BlobStore`](crate::blobs::BlobStore); uploads stream to
//! its staging directory and are moved in after their digest is checked. The
//! small index (which repository has which blobs and manifests, and tags) is
//! kept in the API store under `/shoal.registry/…` keys (see [`index`]), so it
//! shares the store's durability and needs no file format of its own.
//!
//! Repository names: a mirror request carries the upstream registry as `?ns=`
//! (as containerd sends). `docker.io` (or no `ns`) maps to the plain name
//! (`library/busybox`); any other upstream is kept as a prefix
//! (`ghcr.io/org/app`), so one registry mirrors several upstreams.

mod blobs;
mod error;
pub mod index;
mod manifests;

pub use error::RegistryError;

use crate::api::AppState;
use crate::auth::Identity;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use http::Method;
use std::collections::HashMap;
use std::sync::Arc;

/// The registry's routes, merged into the API router.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2", get(base))
        .route("/v2/", get(base))
        .route("/v2/{*rest}", any(dispatch))
}

/// `GET /v2/`: the API version check clients start with.
async fn base(req: Request<Body>) -> Response {
    match identity(&req) {
        Ok(_) => (
            [
                ("Docker-Distribution-API-Version", "registry/2.0"),
                ("Content-Type", "application/json"),
            ],
            "{}",
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

fn identity(req: &Request<Body>) -> Result<Identity, RegistryError> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or(RegistryError::Unauthorized)
}

/// Pushing needs cluster-admin until RBAC is enforced; any authenticated
/// identity (nodes included) may pull.
fn may_push(id: &Identity) -> Result<(), RegistryError> {
    if id.is_master() {
        Ok(())
    } else {
        Err(RegistryError::Denied(format!(
            "user \"{}\" may not push images",
            id.user
        )))
    }
}

/// What a `/v2/<rest>` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
}

fn parse_route(rest: &str) -> Option<Route> {
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name.to_string()));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name.to_string()));
    }
    if let Some(i) = rest.rfind("/blobs/uploads/") {
        return Some(Route::Upload(
            rest[..i].to_string(),
            rest[i + "/blobs/uploads/".len()..].to_string(),
        ));
    }
    if let Some(i) = rest.rfind("/manifests/") {
        return Some(Route::Manifest(
            rest[..i].to_string(),
            rest[i + "/manifests/".len()..].to_string(),
        ));
    }
    if let Some(i) = rest.rfind("/blobs/") {
        return Some(Route::Blob(
            rest[..i].to_string(),
            rest[i + "/blobs/".len()..].to_string(),
        ));
    }
    None
}

/// Check a repository path: lowercase components `[a-z0-9]+([._-]+[a-z0-9]+)*`.
fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            let b = c.as_bytes();
            let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
            !b.is_empty()
                && alnum(b[0])
                && alnum(b[b.len() - 1])
                && b.iter()
                    .all(|&x| alnum(x) || x == b'.' || x == b'_' || x == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(RegistryError::NameInvalid(format!(
            "invalid repository name {name:?}"
        )))
    }
}

/// The repository's name in this registry, given the path name and `ns`.
fn repo_name(name: &str, ns: Option<&str>) -> Result<String, RegistryError> {
    check_name(name)?;
    match ns {
        None | Some("") | Some("docker.io") => Ok(name.to_string()),
        Some(ns) => {
            let ok = ns.len() <= 253
                && ns.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                });
            if !ok {
                return Err(RegistryError::NameInvalid(format!(
                    "invalid ns parameter {ns:?}"
                )));
            }
            Ok(format!("{ns}/{name}"))
        }
    }
}

fn query(req: &Request<Body>) -> HashMap<String, String> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// Everything under `/v2/`.
async fn dispatch(State(state): State<Arc<AppState>>, req: Request<Body>) -> Response {
    let result = async {
        let id = identity(&req)?;
        let blob_store =
            state.hooks.blobs.clone().ok_or_else(|| {
                RegistryError::Unsupported("this server has no blob store".into())
            })?;
        let path = req.uri().path().to_string();
        let rest = path.strip_prefix("/v2/").unwrap_or("");
        let route = parse_route(rest)
            .ok_or_else(|| RegistryError::NameInvalid(format!("unknown registry path {path}")))?;
        let q = query(&req);
        let ns = q.get("ns").map(String::as_str);
        let method = req.method().clone();
        let ctx = Ctx {
            state: state.clone(),
            blobs: blob_store,
        };
        match (route, method) {
            (Route::Catalog, Method::GET) => manifests::catalog(&ctx).await,
            (Route::Tags(name), Method::GET) => {
                manifests::tags(&ctx, &repo_name(&name, ns)?, &name).await
            }
            (Route::Manifest(name, r), m @ (Method::GET | Method::HEAD)) => {
                manifests::get(&ctx, &repo_name(&name, ns)?, &r, m == Method::HEAD).await
            }
            (Route::Manifest(name, r), Method::PUT) => {
                may_push(&id)?;
                let repo = repo_name(&name, ns)?;
                manifests::put(&ctx, &repo, &name, &r, req).await
            }
            (Route::Manifest(name, r), Method::DELETE) => {
                may_push(&id)?;
                manifests::delete(&ctx, &repo_name(&name, ns)?, &r).await
            }
            (Route::Blob(name, d), m @ (Method::GET | Method::HEAD)) => {
                blobs::get(&ctx, &repo_name(&name, ns)?, &d, m == Method::HEAD).await
            }
            (Route::UploadStart(name), Method::POST) => {
                may_push(&id)?;
                let repo = repo_name(&name, ns)?;
                blobs::start_upload(&ctx, &repo, &name, ns, &q, req).await
            }
            (Route::Upload(name, uid), m) => {
                may_push(&id)?;
                let repo = repo_name(&name, ns)?;
                let up = blobs::Upload::new(&ctx, &name, ns, &uid)?;
                match m {
                    Method::GET => up.status().await,
                    Method::PATCH => up.patch(req).await,
                    Method::PUT => up.finish(&ctx, &repo, &q, req).await,
                    Method::DELETE => up.cancel().await,
                    m => Err(RegistryError::Unsupported(format!("{m} {path}"))),
                }
            }
            (_, m) => Err(RegistryError::Unsupported(format!("{m} {path}"))),
        }
    }
    .await;
    match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// What handlers need.
struct Ctx {
    state: Arc<AppState>,
    blobs: crate::blobs::BlobStore,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(parse_route("_catalog"), Some(Route::Catalog));
        assert_eq!(
            parse_route("library/busybox/manifests/latest"),
            Some(Route::Manifest("library/busybox".into(), "latest".into()))
        );
        assert_eq!(
            parse_route("a/b/blobs/sha256:00"),
            Some(Route::Blob("a/b".into(), "sha256:00".into()))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/"),
            Some(Route::UploadStart("a".into()))
        );
        assert_eq!(
            parse_route("a/blobs/uploads/1234"),
            Some(Route::Upload("a".into(), "1234".into()))
        );
        assert_eq!(parse_route("a/tags/list"), Some(Route::Tags("a".into())));
        // A repository may itself be called "manifests".
        assert_eq!(
            parse_route("x/manifests/manifests/v1"),
            Some(Route::Manifest("x/manifests".into(), "v1".into()))
        );
        assert_eq!(parse_route("nothing"), None);
    }

    #[test]
    fn names_and_namespaces() {
        assert_eq!(
            repo_name("library/busybox", None).unwrap(),
            "library/busybox"
        );
        assert_eq!(
            repo_name("library/busybox", Some("docker.io")).unwrap(),
            "library/busybox"
        );
        assert_eq!(
            repo_name("org/app", Some("ghcr.io")).unwrap(),
            "ghcr.io/org/app"
        );
        assert_eq!(
            repo_name("app", Some("127.0.0.1:5000")).unwrap(),
            "127.0.0.1:5000/app"
        );
        assert!(repo_name("Upper", None).is_err());
        assert!(repo_name("a//b", None).is_err());
        assert!(repo_name("../etc", None).is_err());
        assert!(repo_name("a", Some("x/../y")).is_err());
    }
}
