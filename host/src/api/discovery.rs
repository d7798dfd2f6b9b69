//! Discovery (`/api`, `/apis`, group and version resource lists), `/version`,
//! and OpenAPI documents enough for kubectl's field validation checks.

use super::handlers::Query;
use super::resources::{self, RESOURCES};
use axum::response::{IntoResponse, Response};
use http::{header, Method, StatusCode};
use serde_json::{json, Value};

fn ok(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&v).expect("serializes"),
    )
        .into_response()
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let mut out = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        let mut e = json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": resources::verbs(None),
        });
        if !r.short_names.is_empty() {
            e["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            e["categories"] = json!(r.categories);
        }
        out.push(e);
        for sub in r.subresources {
            let (g, v, k) = resources::sub_kind(r, sub);
            let kind = if k.is_empty() { r.kind } else { k };
            let mut e = json!({
                "name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": kind, "verbs": resources::verbs(Some(sub)),
            });
            if !k.is_empty() {
                e["group"] = json!(g);
                e["version"] = json!(v);
            }
            out.push(e);
        }
    }
    if out.is_empty() {
        return None;
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}),
    )
}

fn group_entry(group: &str) -> Value {
    let versions: Vec<Value> = resources::group_versions()
        .into_iter()
        .filter(|(g, _)| *g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

/// Kubernetes version we claim compatibility with.
pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32", "gitVersion": concat!("v1.32.0-shoal.", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "", "goVersion": "n/a",
        "compiler": "rustc", "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

fn gvk(r: &resources::ResourceInfo) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

/// OpenAPI v3 document for one group/version. It declares the operations and
/// the `fieldValidation` parameter (so kubectl validates on the server) but
/// does not advertise strategic merge patch in request bodies, so kubectl
/// computes strategic patches from its built-in type metadata, which is what
/// the server's strategic merge implements.
fn openapi_v3_gv(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let params = json!([
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
    ]);
    let body = json!({"content": {
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}},
    }});
    let mut any = false;
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        any = true;
        let (coll, item) = if r.namespaced {
            (
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
            )
        } else {
            (
                format!("{prefix}/{}", r.plural),
                format!("{prefix}/{}/{{name}}", r.plural),
            )
        };
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind), "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk(r), "parameters": params,
                "responses": {"200": {"description": "OK"}},
            })
        };
        let mut post = op("post");
        post["requestBody"] =
            json!({"content": {"application/json": {"schema": {"type": "object"}}}});
        let mut put = op("put");
        put["requestBody"] =
            json!({"content": {"application/json": {"schema": {"type": "object"}}}});
        let mut patch = op("patch");
        patch["requestBody"] = body.clone();
        paths.insert(coll, json!({"get": op("list"), "post": post}));
        paths.insert(
            item,
            json!({"get": op("get"), "put": put, "patch": patch, "delete": op("delete")}),
        );
    }
    any.then(|| {
        json!({
            "openapi": "3.0.0",
            "info": {"title": "Shoal", "version": env!("CARGO_PKG_VERSION")},
            "paths": paths,
            "components": {"schemas": {}},
        })
    })
}

fn openapi_v3_root() -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in resources::group_versions() {
        let p = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let url = format!(
            "/openapi/v3/{p}?hash={}",
            env!("CARGO_PKG_VERSION").replace('.', "")
        );
        paths.insert(p, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn openapi_v2() -> Value {
    json!({
        "swagger": "2.0",
        "info": {"title": "Shoal", "version": env!("CARGO_PKG_VERSION")},
        "paths": {},
        "definitions": {},
    })
}

/// Serve a discovery path, or None when the path is not a discovery path.
pub fn handle(method: &Method, segs: &[&str], _query: &Query) -> Option<Response> {
    if method != Method::GET {
        return None;
    }
    let v = match segs {
        ["version"] => version(),
        ["api"] => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
        }
        ["api", "v1"] => resource_list("", "v1")?,
        ["apis"] => {
            let mut groups: Vec<&str> = Vec::new();
            for (g, _) in resources::group_versions() {
                if !g.is_empty() && !groups.contains(&g) {
                    groups.push(g);
                }
            }
            let mut list: Vec<Value> = groups.iter().map(|g| group_entry(g)).collect();
            list.push(super::metrics_api::group_entry());
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list})
        }
        ["apis", g] if resources::group_versions().iter().any(|(x, _)| x == g) => {
            let mut e = group_entry(g);
            e["kind"] = json!("APIGroup");
            e["apiVersion"] = json!("v1");
            e
        }
        ["apis", g, v] => resource_list(g, v)?,
        ["openapi", "v2"] => openapi_v2(),
        ["openapi", "v3"] => openapi_v3_root(),
        ["openapi", "v3", "api", v] => openapi_v3_gv("", v)?,
        ["openapi", "v3", "apis", g, v] => openapi_v3_gv(g, v)?,
        _ => return None,
    };
    Some(ok(v))
}
