//! Authorizer attributes from an HTTP request (Kubernetes' `RequestInfo`), and
//! impersonation (`Impersonate-User` / `Impersonate-Group`).

use super::{denied, resource_attrs, Authorizer};
use crate::auth::Identity;
use crate::plugin::Attributes;
use axum::extract::Request;
use axum::response::Response;
use http::{Method, Uri};

/// Subresources of a namespace (`/api/v1/namespaces/x/status`).
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

fn method_verb(m: &Method) -> &'static str {
    match *m {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
}

/// The attributes of a request by `id`, as Kubernetes' request-info factory
/// derives them: `/api/v1/...` and `/apis/<group>/<version>/...` with at least
/// a resource are resource requests; everything else is a non-resource URL
/// with the lower-cased method as verb.
pub fn attributes(id: &Identity, method: &Method, uri: &Uri) -> Attributes {
    let path = uri.path();
    let nonresource = || {
        let verb = method.as_str().to_ascii_lowercase();
        super::path_attrs(id, &verb, path)
    };
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return nonresource(),
    };
    let verb = method_verb(method);
    if verb.is_empty() {
        return nonresource();
    }
    let mut parts: &[&str] = rest;
    let mut namespace = "";
    if parts[0] == "namespaces" && parts.len() > 1 {
        namespace = parts[1];
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    let resource = parts[0];
    let name = parts.get(1).copied().unwrap_or("");
    let sub = parts.get(2).copied().unwrap_or("");
    let query = uri.query().unwrap_or("");
    let watching = form_urlencoded::parse(query.as_bytes())
        .any(|(k, v)| k == "watch" && (v == "true" || v == "1"));
    let verb = match (verb, name.is_empty()) {
        ("get", true) if watching => "watch",
        ("get", true) => "list",
        ("delete", true) => "deletecollection",
        (v, _) => v,
    };
    resource_attrs(id, verb, namespace, group, resource, sub, name)
}

/// Apply `Impersonate-User`/`Impersonate-Group` headers: the requester needs
/// `impersonate` on each (users, groups, or serviceaccounts for a service
/// account's user name). Returns the identity the request proceeds as.
#[allow(clippy::result_large_err)]
pub fn impersonate(
    authz: &Authorizer,
    id: Identity,
    mut req: Request,
) -> Result<(Identity, Request), Box<Response>> {
    let headers = req.headers();
    let Some(user) = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        if headers.contains_key("impersonate-group") {
            let attrs = resource_attrs(&id, "impersonate", "", "", "users", "", "");
            return Err(Box::new(super::forbidden(
                &attrs,
                "requested impersonation of groups without impersonating a user",
            )));
        }
        return Ok((id, req));
    };
    let groups: Vec<String> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    let mut checks = Vec::new();
    let sa = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'));
    match sa {
        Some((ns, name)) => checks.push(resource_attrs(
            &id,
            "impersonate",
            ns,
            "",
            "serviceaccounts",
            "",
            name,
        )),
        None => checks.push(resource_attrs(
            &id,
            "impersonate",
            "",
            "",
            "users",
            "",
            &user,
        )),
    }
    for g in &groups {
        checks.push(resource_attrs(&id, "impersonate", "", "", "groups", "", g));
    }
    for attrs in &checks {
        if let super::Outcome::Deny(reason) = authz.authorize(&id, attrs) {
            return Err(Box::new(denied(attrs, &reason)));
        }
    }
    let mut all = groups;
    if let Some((ns, _)) = sa {
        for g in [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
        ] {
            if !all.contains(&g) {
                all.push(g);
            }
        }
    }
    if user != "system:anonymous" && !all.iter().any(|g| g == "system:authenticated") {
        all.push("system:authenticated".into());
    }
    let mut as_id = id;
    as_id.user = user;
    as_id.groups = all;
    as_id.uid = String::new();
    as_id.extra = Default::default();
    req.headers_mut().remove("impersonate-user");
    req.headers_mut().remove("impersonate-group");
    Ok((as_id, req))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            user: "u".into(),
            groups: vec![],
            uid: String::new(),
            extra: Default::default(),
        }
    }

    fn at(m: Method, p: &str) -> Attributes {
        attributes(&id(), &m, &p.parse().unwrap())
    }

    #[test]
    fn request_info_like_kubernetes() {
        let a = at(Method::GET, "/api/v1/namespaces/ns/pods");
        assert_eq!(
            (a.verb.as_str(), a.namespace.as_str(), a.resource.as_str()),
            ("list", "ns", "pods")
        );
        let a = at(Method::GET, "/api/v1/namespaces/ns/pods?watch=true");
        assert_eq!(a.verb, "watch");
        let a = at(Method::GET, "/api/v1/namespaces/ns/pods/p/log");
        assert_eq!(
            (a.verb.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("get", "p", "log")
        );
        let a = at(Method::POST, "/apis/apps/v1/namespaces/ns/deployments");
        assert_eq!((a.verb.as_str(), a.api_group.as_str()), ("create", "apps"));
        let a = at(Method::DELETE, "/api/v1/namespaces/ns/pods");
        assert_eq!(a.verb, "deletecollection");
        let a = at(Method::GET, "/api/v1/namespaces/ns");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.namespace.as_str()),
            ("namespaces", "ns", "ns")
        );
        let a = at(Method::PUT, "/api/v1/namespaces/ns/finalize");
        assert_eq!(
            (a.resource.as_str(), a.name.as_str(), a.subresource.as_str()),
            ("namespaces", "ns", "finalize")
        );
        let a = at(Method::PATCH, "/api/v1/nodes/n1/status");
        assert_eq!(
            (
                a.verb.as_str(),
                a.resource.as_str(),
                a.name.as_str(),
                a.subresource.as_str(),
                a.namespace.as_str()
            ),
            ("patch", "nodes", "n1", "status", "")
        );
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/healthz",
            "/version",
            "/v2/x/manifests/y",
        ] {
            let a = at(Method::GET, p);
            assert!(!a.resource_request, "{p}");
            assert_eq!(a.path, p);
            assert_eq!(a.verb, "get");
        }
        assert_eq!(at(Method::PUT, "/shoal/v1/nodes/n/metrics").verb, "put");
    }
}
