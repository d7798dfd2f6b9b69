//! Request dispatch and the verbs: get, list, watch, create, update, patch,
//! delete, deletecollection, and the status, scale and binding subresources.

use super::error::{ApiError, ApiResult, Cause};
use super::object::{self, meta_mut, meta_str};
use super::resources::{self, ResourceInfo};
use super::selector::{FieldSelector, LabelSelector};
use super::table::{self, IncludeObject};
use super::{discovery, strategic, validation, watch, AppState};
use crate::auth::Identity;
use crate::store::{KeyValue, Op, Precondition, StoreError};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{header, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

/// Query parameters, last value wins.
pub type Query = HashMap<String, String>;

/// A parsed resource request.
#[derive(Debug)]
pub struct Target {
    /// Resource.
    pub info: &'static ResourceInfo,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// Subresource.
    pub sub: Option<String>,
}

/// How a response body should be rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Plain JSON objects.
    Json,
    /// meta.k8s.io/v1 Table.
    Table(IncludeObject),
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).expect("a Value always serializes");
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn parse_query(q: Option<&str>) -> Query {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn negotiate(headers: &http::HeaderMap, query: &Query) -> ApiResult<Format> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.is_empty() {
        return Ok(Format::Json);
    }
    for part in accept.split(',') {
        let p = part.trim();
        let media = p.split(';').next().unwrap_or("").trim();
        if p.contains("as=Table") && media == "application/json" {
            if p.contains("g=meta.k8s.io") {
                let inc = IncludeObject::parse(query.get("includeObject").map(String::as_str));
                return Ok(Format::Table(inc));
            }
            continue;
        }
        if p.contains("as=") {
            // Other conversions (PartialObjectMetadata, discovery v2) are not served: fall through.
            continue;
        }
        if media == "application/json" || media == "*/*" || media == "application/*" {
            return Ok(Format::Json);
        }
    }
    Err(ApiError::NotAcceptable(format!(
        "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io (got \"{accept}\")"
    )))
}

/// Parse `/api/v1/...` or `/apis/g/v/...` after the group/version.
fn parse_target(group: &str, version: &str, rest: &[&str]) -> ApiResult<Target> {
    let nf = || ApiError::PathNotFound("the server could not find the requested resource".into());
    let find = |plural: &str| resources::lookup(group, version, plural).ok_or_else(nf);
    let s = |x: &&str| x.to_string();
    match rest {
        [] => Err(nf()),
        ["namespaces", ns, res, tail @ ..]
            if resources::lookup(group, version, res).is_some_and(|r| r.namespaced) =>
        {
            let info = find(res)?;
            match tail {
                [] => Ok(Target {
                    info,
                    namespace: Some(ns.to_string()),
                    name: None,
                    sub: None,
                }),
                [name] => Ok(Target {
                    info,
                    namespace: Some(ns.to_string()),
                    name: Some(s(name)),
                    sub: None,
                }),
                [name, sub] => Ok(Target {
                    info,
                    namespace: Some(ns.to_string()),
                    name: Some(s(name)),
                    sub: Some(s(sub)),
                }),
                _ => Err(nf()),
            }
        }
        [res, tail @ ..] => {
            let info = find(res)?;
            let (name, sub) = match tail {
                [] => (None, None),
                [name] => (Some(s(name)), None),
                [name, sub] => (Some(s(name)), Some(s(sub))),
                _ => return Err(nf()),
            };
            if info.namespaced && name.is_some() {
                return Err(nf());
            }
            Ok(Target {
                info,
                namespace: None,
                name,
                sub,
            })
        }
    }
}

/// Entry point: returns (verb, resource, response) for metrics.
pub async fn handle(
    state: &AppState,
    identity: Identity,
    req: Request<Body>,
) -> (String, String, Response) {
    // Authorization is not enforced yet (RBAC and the node authorizer come
    // with the security work): any authenticated identity may proceed.
    let _ = identity;
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    // Decode percent-escapes in segments (names never need them, but be exact).
    let decoded: Vec<String> = segs
        .iter()
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let method = req.method().clone();
    if let Some(resp) = discovery::handle(&method, &segs, &query) {
        return ("get".into(), "discovery".into(), resp);
    }
    let target = match segs.as_slice() {
        ["api", "v1", rest @ ..] => parse_target("", "v1", rest),
        ["apis", g, v, rest @ ..] => parse_target(g, v, rest),
        _ => Err(ApiError::PathNotFound(
            "the server could not find the requested resource".into(),
        )),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return ("unknown".into(), "unknown".into(), e.into_response()),
    };
    let resource = match &target.sub {
        Some(s) => format!("{}/{s}", target.info.plural),
        None => target.info.plural.to_string(),
    };
    let watching = matches!(
        query.get("watch").map(String::as_str),
        Some("true") | Some("1")
    );
    let verb = match (&method, target.name.is_some(), watching) {
        (&Method::GET, false, true) => "watch",
        (&Method::GET, false, false) => "list",
        (&Method::GET, true, _) => "get",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, _, _) => "update",
        (&Method::PATCH, _, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        (&Method::DELETE, false, _) => "deletecollection",
        _ => "unknown",
    };
    // Admission plugins see the requesting user and may add warnings.
    let (resp, warnings) = crate::admission::scope(
        &identity,
        dispatch(state, &method, target, query, req, watching),
    )
    .await;
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    crate::admission::add_warning_headers(resp.headers_mut(), &warnings);
    (verb.into(), resource, resp)
}

pub(crate) async fn read_body(
    state: &AppState,
    req: Request<Body>,
) -> ApiResult<(String, bytes::Bytes)> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let limit = state.config.max_body_bytes;
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|_| {
            ApiError::TooLarge(format!(
                "the request body is too large: the limit is {limit} bytes"
            ))
        })?;
    Ok((ct, body))
}

/// Decode a JSON (or YAML) body into an object.
pub(crate) fn decode_body(ct: &str, body: &[u8]) -> ApiResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    let v: Value = match ct {
        "application/yaml" | "application/x-yaml" | "text/yaml" => serde_yaml::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("the body of the request was in an unknown format: {e}")))?,
        super::protobuf::MEDIA_TYPE => super::protobuf::decode(body)
            .map_err(|e| ApiError::BadRequest(format!("the body of the request could not be decoded as protobuf: {e}")))?,
        "application/json" | "" | "*/*" => serde_json::from_slice(body).map_err(|e| {
            ApiError::BadRequest(format!("the body of the request could not be decoded as JSON: {e}"))
        })?,
        other => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {other})"
            )))
        }
    };
    if !v.is_object() {
        return Err(ApiError::BadRequest(
            "the body of the request must be a JSON object".into(),
        ));
    }
    Ok(v)
}

async fn dispatch(
    state: &AppState,
    method: &Method,
    t: Target,
    query: Query,
    req: Request<Body>,
    watching: bool,
) -> ApiResult<Response> {
    // pods/log and pods/exec are served by the pod's node agent (api/proxy.rs).
    if let (Some(sub), true, "", "pods") = (
        t.sub.as_deref(),
        t.name.is_some(),
        t.info.group,
        t.info.plural,
    ) {
        if sub == "portforward" {
            return super::proxy::pod_port_forward(state, &t, req).await;
        }
        if super::proxy::POD_SUBRESOURCES.contains(&sub) {
            // CONNECT admission for exec and attach.
            crate::admission::admit_connect(state, &t, req.uri().query()).await?;
            return super::proxy::pod_subresource(state, &t, sub, req).await;
        }
    }
    // serviceaccounts/token and authentication.k8s.io reviews (api/tokens.rs).
    if super::tokens::serves(&t) {
        return super::tokens::serve(state, method, &t, req).await;
    }
    let format = negotiate(req.headers(), &query)?;
    let sub = t.sub.as_deref();
    if let Some(sub) = sub {
        if !t.info.subresources.contains(&sub) {
            return Err(ApiError::PathNotFound(format!(
                "the server could not find the requested resource ({} {sub} is not served)",
                t.info.plural
            )));
        }
    }
    match (method, t.name.is_some(), sub) {
        (&Method::GET, false, None) if watching => watch::serve(state, &t, &query, format).await,
        (&Method::GET, false, None) => list(state, &t, &query, format),
        (&Method::GET, true, None) | (&Method::GET, true, Some("status")) => {
            let obj = get_object(state, &t)?;
            render_one(&t, obj, format)
        }
        (&Method::GET, true, Some("scale")) => {
            let obj = get_object(state, &t)?;
            Ok(json_response(StatusCode::OK, &scale_of(&obj)))
        }
        (&Method::POST, false, None) => {
            let (ct, body) = read_body(state, req).await?;
            let obj = decode_body(&ct, &body)?;
            let created = create(state, &t, obj, &query).await?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (&Method::POST, true, Some("binding")) => {
            let (ct, body) = read_body(state, req).await?;
            let binding = decode_body(&ct, &body)?;
            bind(state, &t, binding).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (&Method::PUT, true, None) | (&Method::PUT, true, Some("status")) => {
            let (ct, body) = read_body(state, req).await?;
            let obj = decode_body(&ct, &body)?;
            let (code, out) = update(state, &t, obj, &query).await?;
            Ok(json_response(code, &out))
        }
        (&Method::PUT, true, Some("scale")) => {
            let (ct, body) = read_body(state, req).await?;
            let scale = decode_body(&ct, &body)?;
            let out = update_scale(state, &t, move |_| Ok(scale.clone())).await?;
            Ok(json_response(StatusCode::OK, &out))
        }
        (&Method::PATCH, true, None) | (&Method::PATCH, true, Some("status")) => {
            let (ct, body) = read_body(state, req).await?;
            let out = patch(state, &t, &ct, &body, &query).await?;
            Ok(json_response(StatusCode::OK, &out))
        }
        (&Method::PATCH, true, Some("scale")) => {
            let (ct, body) = read_body(state, req).await?;
            let info = t.info;
            let out = update_scale(state, &t, move |cur| {
                apply_patch(info, "Scale", cur, &ct, &body)
            })
            .await?;
            Ok(json_response(StatusCode::OK, &out))
        }
        (&Method::DELETE, true, None) => {
            let (ct, body) = read_body(state, req).await?;
            let opts = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                decode_body(&ct, &body)?
            };
            let (code, out) = delete(state, &t, &opts, &query).await?;
            Ok(json_response(code, &out))
        }
        (&Method::DELETE, false, None) => {
            let (ct, body) = read_body(state, req).await?;
            let opts = if body.iter().all(u8::is_ascii_whitespace) {
                json!({})
            } else {
                decode_body(&ct, &body)?
            };
            let out = delete_collection(state, &t, &opts, &query).await?;
            Ok(json_response(StatusCode::OK, &out))
        }
        (m, _, _) => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

fn not_found(t: &Target) -> ApiError {
    ApiError::NotFound {
        group: t.info.group.into(),
        resource: t.info.plural.into(),
        name: t.name.clone().unwrap_or_default(),
    }
}

fn get_kv(state: &AppState, t: &Target) -> ApiResult<KeyValue> {
    let name = t.name.as_deref().unwrap_or("");
    state
        .store
        .get(&t.info.key(t.namespace.as_deref(), name))?
        .ok_or_else(|| not_found(t))
}

fn get_object(state: &AppState, t: &Target) -> ApiResult<Value> {
    object::from_store(&get_kv(state, t)?)
}

fn render_one(t: &Target, obj: Value, format: Format) -> ApiResult<Response> {
    match format {
        Format::Json => Ok(json_response(StatusCode::OK, &obj)),
        Format::Table(inc) => {
            let rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
            let tbl = table::table(
                t.info.kind,
                &t.info.api_version(),
                &[obj],
                inc,
                json!({"resourceVersion": rv}),
                chrono::Utc::now(),
            );
            Ok(json_response(StatusCode::OK, &tbl))
        }
    }
}

/// Parsed label and field selectors of a request.
pub struct Selectors {
    /// Label selector.
    pub label: LabelSelector,
    /// Field selector.
    pub field: FieldSelector,
}

impl Selectors {
    /// Parse from query parameters, checking fields against the resource.
    pub fn from_query(info: &ResourceInfo, query: &Query) -> ApiResult<Selectors> {
        let label =
            LabelSelector::parse(query.get("labelSelector").map(String::as_str).unwrap_or(""))
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let field =
            FieldSelector::parse(query.get("fieldSelector").map(String::as_str).unwrap_or(""))
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut supported = vec!["metadata.name"];
        if info.namespaced {
            supported.push("metadata.namespace");
        }
        supported.extend_from_slice(info.field_selectors);
        field
            .check_supported(&supported)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(Selectors { label, field })
    }

    /// Whether an object matches both selectors.
    pub fn matches(&self, obj: &Value) -> bool {
        (self.label.is_empty()
            || self.label.matches(
                obj.get("metadata")
                    .and_then(|m| m.get("labels"))
                    .and_then(Value::as_object),
            ))
            && (self.field.is_empty() || self.field.matches(obj))
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Continue {
    rv: u64,
    start: String,
}

fn list(state: &AppState, t: &Target, query: &Query, format: Format) -> ApiResult<Response> {
    let sel = Selectors::from_query(t.info, query)?;
    let limit: usize = match query.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::BadRequest(format!("invalid limit \"{l}\"")))?,
        None => 0,
    };
    let ns = t
        .namespace
        .as_deref()
        .or_else(|| sel.field.exact("metadata.namespace"));
    let prefix = t.info.prefix(ns);
    let (mut at, mut start) = (None, None::<String>);
    if let Some(c) = query.get("continue").filter(|c| !c.is_empty()) {
        use base64::Engine;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(c)
            .ok()
            .and_then(|b| serde_json::from_slice::<Continue>(&b).ok())
            .ok_or_else(|| ApiError::BadRequest("invalid continue token".into()))?;
        at = Some(raw.rv);
        start = Some(raw.start);
    } else if let Some(rv) = query
        .get("resourceVersion")
        .filter(|s| !s.is_empty() && *s != "0")
    {
        if query.get("resourceVersionMatch").map(String::as_str) == Some("Exact") {
            at = Some(object::parse_rv(rv)?);
        } else {
            let rv = object::parse_rv(rv)?;
            if rv > state.store.current_revision() {
                return Err(ApiError::Gone(format!(
                    "Timeout: Too large resource version: {rv}, current resource version: {}",
                    state.store.current_revision()
                )));
            }
        }
    }
    let mut items = Vec::new();
    let mut next_start: Option<String> = None;
    let revision;
    loop {
        let page_limit = if limit == 0 {
            0
        } else {
            (limit - items.len()).max(1)
        };
        let page = state.store.list(&prefix, start.as_deref(), page_limit, at).map_err(|e| match e {
            StoreError::Compacted { .. } if query.contains_key("continue") => ApiError::Gone(
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into(),
            ),
            e => e.into(),
        })?;
        at = Some(page.revision);
        let last_key = page.items.last().map(|kv| kv.key.clone());
        for kv in &page.items {
            let obj = object::from_store(kv)?;
            if sel.matches(&obj) {
                items.push(obj);
            }
        }
        if page.more && limit > 0 && items.len() >= limit {
            next_start = last_key;
            revision = page.revision;
            break;
        }
        if !page.more {
            revision = page.revision;
            break;
        }
        start = last_key;
    }
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(s) = next_start {
        use base64::Engine;
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&Continue {
                rv: revision,
                start: s,
            })
            .expect("serializes"),
        );
        meta["continue"] = Value::String(token);
    }
    let out = match format {
        Format::Table(inc) => table::table(
            t.info.kind,
            &t.info.api_version(),
            &items,
            inc,
            meta,
            chrono::Utc::now(),
        ),
        Format::Json => json!({
            "kind": format!("{}List", t.info.kind),
            "apiVersion": t.info.api_version(),
            "metadata": meta,
            "items": items,
        }),
    };
    Ok(json_response(StatusCode::OK, &out))
}

fn check_type_meta(info: &ResourceInfo, obj: &mut Value, kind: &str) -> ApiResult<()> {
    let av = info.api_version();
    let expected_kind = kind;
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != av => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )))
        }
        _ => {}
    }
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if k != expected_kind => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({expected_kind}) for this resource"
            )))
        }
        _ => {}
    }
    obj["apiVersion"] = Value::String(av);
    obj["kind"] = Value::String(expected_kind.to_string());
    Ok(())
}

/// Run the kind's typed codec; a type error is a 400 naming the kind.
fn typed(info: &ResourceInfo, obj: Value, strict: bool) -> ApiResult<Value> {
    let out = (info.codec)(obj.clone()).map_err(|e| {
        ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            info.kind, info.version, info.kind
        ))
    })?;
    if strict {
        let mut unknown = Vec::new();
        unknown_fields(&obj, &out, "", &mut unknown);
        if !unknown.is_empty() {
            let list = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ApiError::BadRequest(format!(
                "strict decoding error: {list}"
            )));
        }
    }
    Ok(out)
}

/// Fields present in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn invalid(info: &ResourceInfo, name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        group: info.group.into(),
        kind: info.kind.into(),
        name: name.into(),
        causes,
    }
}

fn strict(query: &Query) -> bool {
    query.get("fieldValidation").map(String::as_str) == Some("Strict")
}

fn dry_run(query: &Query) -> bool {
    query.get("dryRun").is_some_and(|v| v == "All")
}

/// Check the namespace exists and is not terminating.
fn check_namespace(state: &AppState, ns: &str) -> ApiResult<()> {
    match state.store.get(&format!("/core/namespaces/{ns}"))? {
        None => Err(ApiError::NotFound {
            group: String::new(),
            resource: "namespaces".into(),
            name: ns.into(),
        }),
        Some(kv) => {
            let v: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            if v.get("metadata")
                .and_then(|m| m.get("deletionTimestamp"))
                .is_some()
                || v.get("status")
                    .and_then(|s| s.get("phase"))
                    .and_then(Value::as_str)
                    == Some("Terminating")
            {
                Err(ApiError::Forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            } else {
                Ok(())
            }
        }
    }
}

fn conflict(info: &ResourceInfo, name: &str) -> ApiError {
    ApiError::Conflict {
        group: info.group.into(),
        resource: info.plural.into(),
        name: name.into(),
        message: "the object has been modified; please apply your changes to the latest version and try again".into(),
    }
}

/// Prepare a new object (metadata, defaults, validation) for creation.
pub fn prepare_create(
    info: &ResourceInfo,
    namespace: Option<&str>,
    mut obj: Value,
    strict_fields: bool,
) -> ApiResult<Value> {
    check_type_meta(info, &mut obj, info.kind)?;
    let mut obj = typed(info, obj, strict_fields)?;
    let m = meta_mut(&mut obj);
    if info.namespaced {
        let ns = namespace.unwrap_or("");
        match m.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => {
                m.insert("namespace".into(), Value::String(ns.to_string()));
            }
        }
    } else {
        m.remove("namespace");
    }
    let name = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        if let Some(prefix) = m
            .get("generateName")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
        {
            let generated = object::generate_name(prefix);
            m.insert("name".into(), Value::String(generated));
        }
    }
    m.remove("resourceVersion");
    m.remove("deletionTimestamp");
    m.remove("deletionGracePeriodSeconds");
    m.remove("managedFields");
    m.insert(
        "uid".into(),
        Value::String(uuid::Uuid::new_v4().to_string()),
    );
    m.insert(
        "creationTimestamp".into(),
        Value::String(object::now_rfc3339()),
    );
    if info.kind != "ConfigMap"
        && info.kind != "Secret"
        && info.kind != "Event"
        && info.kind != "Namespace"
    {
        m.insert("generation".into(), json!(1));
    }
    if info.has_status() && !matches!(info.kind, "Namespace" | "Node" | "Plugin") {
        // Status is written by controllers through the status subresource.
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    validation::default_object(info, &mut obj);
    let name = meta_str(&obj, "name").unwrap_or("").to_string();
    let mut causes = Vec::new();
    if let Some(c) = validation::check_name(info, &name, "metadata.name") {
        causes.push(c);
    }
    causes.extend(validation::validate(info, &obj));
    if !causes.is_empty() {
        return Err(invalid(info, &name, causes));
    }
    Ok(obj)
}

pub(crate) async fn create(
    state: &AppState,
    t: &Target,
    obj: Value,
    query: &Query,
) -> ApiResult<Value> {
    if t.name.is_some() {
        return Err(ApiError::MethodNotAllowed(
            "POST is not supported on a named object".into(),
        ));
    }
    let ns = t.namespace.as_deref();
    if t.info.namespaced && ns.is_none() {
        return Err(ApiError::PathNotFound(format!(
            "{} must be created in a namespace: POST /api[s]/.../namespaces/<ns>/{}",
            t.info.plural, t.info.plural
        )));
    }
    let generated_from = match meta_str(&obj, "name") {
        Some(n) if !n.is_empty() => None,
        _ => meta_str(&obj, "generateName")
            .filter(|p| !p.is_empty())
            .map(str::to_string),
    };
    let mut obj = prepare_create(t.info, ns, obj, strict(query))?;
    if let Some(ns) = ns {
        check_namespace(state, ns)?;
    }
    if t.info.kind == "Pod" {
        // Built-in ServiceAccount admission (api/serviceaccount_admission.rs).
        super::serviceaccount_admission::admit_pod(state, &mut obj)?;
    }
    // Admission chain (host/src/admission): mutating plugins, validation of
    // what they changed, validating plugins, ResourceQuota.
    let attrs =
        crate::admission::Attributes::of(t, crate::admission::Operation::Create, dry_run(query));
    let mut obj = crate::admission::mutate(state, &attrs, obj, None).await?;
    crate::admission::validate(state, &attrs, Some(&obj), None).await?;
    let mut name = meta_str(&obj, "name").unwrap_or("").to_string();
    check_plugin_module(state, t.info, None, &obj, &name).await?;
    // Service cluster IPs and node ports, written with the object (api/services.rs).
    let reservation = super::services::reserve_create(state, t.info, &mut obj)?;
    if dry_run(query) {
        return Ok(obj);
    }
    // A generated name that collides is generated again, as Kubernetes does
    // since RetryGenerateName; a name the client chose gets AlreadyExists.
    let attempts = if generated_from.is_some() { 8 } else { 1 };
    for _ in 0..attempts {
        let mut ops = vec![Op::Put {
            key: t.info.key(ns, &name),
            value: object::to_store(&mut obj),
            precondition: Precondition::Absent,
        }];
        if t.info.kind == "Namespace" {
            // Every namespace gets a `default` ServiceAccount, created with it.
            let mut sa = default_service_account(&name);
            ops.push(Op::Put {
                key: format!("/core/serviceaccounts/{name}/default"),
                value: object::to_store(&mut sa),
                precondition: Precondition::None,
            });
        }
        match state.store.txn(ops).await {
            Ok(r) => {
                reservation.commit();
                object::set_resource_version(&mut obj, r.revision);
                return Ok(obj);
            }
            Err(StoreError::Conflict { .. }) => {
                if let Some(prefix) = &generated_from {
                    name = object::generate_name(prefix);
                    meta_mut(&mut obj).insert("name".into(), Value::String(name.clone()));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::AlreadyExists {
        group: t.info.group.into(),
        resource: t.info.plural.into(),
        name,
    })
}

/// For Plugin objects whose module or kind changes: the module must be in the
/// blob store and be a component of the kind's world.
async fn check_plugin_module(
    state: &AppState,
    info: &ResourceInfo,
    old: Option<&Value>,
    new: &Value,
    name: &str,
) -> ApiResult<()> {
    if info.kind != "Plugin" {
        return Ok(());
    }
    let Some(check) = state.hooks.plugin_check.clone() else {
        return Ok(());
    };
    let field = |v: &Value, f: &str| {
        v.get("spec")
            .and_then(|s| s.get(f))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (kind, digest) = (field(new, "kind"), field(new, "digest"));
    if old.is_some_and(|o| field(o, "kind") == kind && field(o, "digest") == digest) {
        return Ok(());
    }
    let d = digest.clone();
    let n = name.to_string();
    let verdict = tokio::task::spawn_blocking(move || check(&n, &kind, &d))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    verdict.map_err(|reason| {
        invalid(
            info,
            name,
            vec![Cause {
                reason: "FieldValueInvalid",
                field: "spec.digest".into(),
                message: format!("Invalid value: \"{digest}\": {reason}"),
            }],
        )
    })
}

/// Create an object through the same path as a client's POST (for in-process controllers).
pub async fn create_object(
    state: &AppState,
    group: &str,
    plural: &str,
    namespace: Option<&str>,
    obj: Value,
) -> ApiResult<Value> {
    let version = if group.is_empty() {
        "v1"
    } else {
        resources::RESOURCES
            .iter()
            .find(|r| r.group == group && r.plural == plural)
            .map_or("v1", |r| r.version)
    };
    let info = resources::lookup(group, version, plural)
        .ok_or_else(|| ApiError::PathNotFound(format!("{plural} is not served")))?;
    let t = Target {
        info,
        namespace: namespace.map(str::to_string),
        name: None,
        sub: None,
    };
    create(state, &t, obj, &Query::new()).await
}

/// The `default` ServiceAccount of a namespace.
pub fn default_service_account(ns: &str) -> Value {
    json!({
        "kind": "ServiceAccount", "apiVersion": "v1",
        "metadata": {"name": "default", "namespace": ns, "uid": uuid::Uuid::new_v4().to_string(), "creationTimestamp": object::now_rfc3339()},
    })
}

/// Merge a client's new object with the stored one for an update of the main
/// resource or the status subresource.
fn merge_update(info: &ResourceInfo, sub: Option<&str>, old: &Value, new: Value) -> Value {
    let mut new = new;
    match sub {
        Some("status") => {
            // Only status changes through the status subresource.
            let mut out = old.clone();
            match new.get_mut("status").map(Value::take) {
                Some(s) => out["status"] = s,
                None => {
                    if let Some(o) = out.as_object_mut() {
                        o.remove("status");
                    }
                }
            }
            out
        }
        _ => {
            if info.has_status() && !matches!(info.kind, "Plugin") {
                match old.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(o) = new.as_object_mut() {
                            o.remove("status");
                        }
                    }
                }
            }
            // Server-managed metadata is kept from the stored object.
            let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
            let m = meta_mut(&mut new);
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "namespace",
                "name",
            ] {
                match old_meta.get(k) {
                    Some(v) => {
                        m.insert(k.into(), v.clone());
                    }
                    None => {
                        m.remove(k);
                    }
                }
            }
            m.remove("managedFields");
            new
        }
    }
}

fn without(v: &Value, keys: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        for k in keys {
            o.remove(*k);
        }
    }
    v
}

/// Validate and write an update computed from the current object. Returns the
/// stored object; deletes instead when the last finalizer of a deleting object goes.
async fn write_update(
    state: &AppState,
    t: &Target,
    current: &KeyValue,
    old: &Value,
    mut new: Value,
    query: &Query,
) -> ApiResult<(StatusCode, Value)> {
    let info = t.info;
    let name = t.name.clone().unwrap_or_default();
    super::services::prepare_update(info, t.sub.as_deref(), old, &mut new);
    // Mutating admission first; defaulting and validation below see its result.
    let attrs =
        crate::admission::Attributes::of(t, crate::admission::Operation::Update, dry_run(query));
    let mut new = crate::admission::mutate(state, &attrs, new, Some(old)).await?;
    validation::default_object(info, &mut new);
    let mut causes = validation::validate(info, &new);
    causes.extend(validation::validate_update(info, old, &new));
    if !causes.is_empty() {
        return Err(invalid(info, &name, causes));
    }
    let reservation = super::services::reserve_update(state, t, old, &mut new)?;
    // Generation moves when anything but metadata and status changes.
    if t.sub.is_none()
        && without(old, &["metadata", "status"]) != without(&new, &["metadata", "status"])
    {
        let g = old
            .get("metadata")
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if g > 0 {
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
    }
    if t.sub.is_none() {
        check_plugin_module(state, info, Some(old), &new, &name).await?;
    }
    crate::admission::validate(state, &attrs, Some(&new), Some(old)).await?;
    object::set_resource_version(&mut new, current.mod_revision);
    if &new == old {
        // A no-op update writes nothing and keeps the resourceVersion.
        return Ok((StatusCode::OK, new));
    }
    if dry_run(query) {
        return Ok((StatusCode::OK, new));
    }
    let key = info.key(t.namespace.as_deref(), &name);
    let finalizers_left = new
        .get("metadata")
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let deleting = new
        .get("metadata")
        .and_then(|m| m.get("deletionTimestamp"))
        .is_some();
    let ns_finalizers_left = info.kind == "Namespace"
        && new
            .get("spec")
            .and_then(|s| s.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
    let held =
        finalizers_left || ns_finalizers_left || (info.kind == "Pod" && old_is_graceful(old));
    if deleting && !held {
        let r = state
            .store
            .txn(vec![Op::Delete {
                key,
                precondition: Precondition::ModRevision(current.mod_revision),
            }])
            .await
            .map_err(|e| match e {
                StoreError::Conflict { .. } => conflict(info, &name),
                e => e.into(),
            })?;
        drop(reservation);
        super::services::released(state, info, old);
        object::set_resource_version(&mut new, r.revision);
        return Ok((StatusCode::OK, new));
    }
    let r = state
        .store
        .txn(vec![Op::Put {
            key,
            value: object::to_store(&mut new),
            precondition: Precondition::ModRevision(current.mod_revision),
        }])
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => conflict(info, &name),
            e => e.into(),
        })?;
    reservation.commit();
    object::set_resource_version(&mut new, r.revision);
    Ok((StatusCode::OK, new))
}

/// A pod deleted gracefully stays until its node (or a forced delete) removes it.
fn old_is_graceful(old: &Value) -> bool {
    old.get("metadata")
        .and_then(|m| m.get("deletionGracePeriodSeconds"))
        .and_then(Value::as_i64)
        .unwrap_or(0)
        > 0
}

pub(crate) async fn update(
    state: &AppState,
    t: &Target,
    body: Value,
    query: &Query,
) -> ApiResult<(StatusCode, Value)> {
    let info = t.info;
    let name = t.name.clone().unwrap_or_default();
    let mut body = body;
    check_type_meta(info, &mut body, info.kind)?;
    let body_name = meta_str(&body, "name").unwrap_or("").to_string();
    if body_name != name {
        return Err(ApiError::BadRequest(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    if info.namespaced {
        let ns = t.namespace.as_deref().unwrap_or("");
        match meta_str(&body, "namespace") {
            Some(b) if !b.is_empty() && b != ns => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            _ => {}
        }
    }
    let want_rv = meta_str(&body, "resourceVersion")
        .filter(|s| !s.is_empty())
        .map(object::parse_rv)
        .transpose()?;
    let body = typed(info, body, strict(query))?;
    let current = get_kv(state, t)?;
    if let Some(rv) = want_rv {
        if rv != current.mod_revision {
            return Err(conflict(info, &name));
        }
    }
    let old = object::from_store(&current)?;
    let new = merge_update(info, t.sub.as_deref(), &old, body);
    write_update(state, t, &current, &old, new, query).await
}

/// Apply a patch document of the given content type to `current`.
fn apply_patch(
    info: &ResourceInfo,
    kind: &str,
    current: Value,
    ct: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let name = meta_str(&current, "name").unwrap_or("").to_string();
    match ct {
        "application/json-patch+json" => {
            let p: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON patch: {e}")))?;
            let mut doc = current;
            json_patch::patch(&mut doc, &p).map_err(|e| ApiError::Invalid {
                group: info.group.into(),
                kind: kind.into(),
                name,
                causes: vec![Cause { reason: "FieldValueInvalid", field: "patch".into(), message: e.to_string() }],
            })?;
            Ok(doc)
        }
        "application/merge-patch+json" => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid merge patch: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::BadRequest("a merge patch must be a JSON object".into()));
            }
            let mut doc = current;
            json_patch::merge(&mut doc, &p);
            Ok(doc)
        }
        "application/strategic-merge-patch+json" => {
            if info.kind == "Plugin" {
                return Err(ApiError::UnsupportedMediaType(
                    "strategic merge patch is not supported for plugins.shoal.dev resources; use a merge patch".into(),
                ));
            }
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::BadRequest(format!("invalid strategic merge patch: {e}")))?;
            let meta = strategic::patch_meta_for_kind(kind);
            strategic::apply(&current, &p, meta).map_err(|e| ApiError::BadRequest(e.to_string()))
        }
        "application/apply-patch+yaml" => Err(ApiError::UnsupportedMediaType(
            "server-side apply is not supported yet; use client-side `kubectl apply`".into(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {other})"
        ))),
    }
}

pub(crate) async fn patch(
    state: &AppState,
    t: &Target,
    ct: &str,
    body: &[u8],
    query: &Query,
) -> ApiResult<Value> {
    let info = t.info;
    let name = t.name.clone().unwrap_or_default();
    // Retry on conflict, like Kubernetes' guaranteed update, unless the patch
    // itself pins a resourceVersion.
    for _ in 0..16 {
        let current = get_kv(state, t)?;
        let old = object::from_store(&current)?;
        // Apply to the object without its resourceVersion, so a version in the
        // result is one the patch itself set (a pin), not the stamped current one.
        let mut base = old.clone();
        meta_mut(&mut base).remove("resourceVersion");
        let patched = apply_patch(info, info.kind, base, ct, body)?;
        if !patched.is_object() {
            return Err(ApiError::BadRequest(
                "the patch produced a non-object".into(),
            ));
        }
        let pinned = meta_str(&patched, "resourceVersion").map(str::to_string);
        if let Some(rv) = &pinned {
            if *rv != current.mod_revision.to_string() {
                return Err(conflict(info, &name));
            }
        }
        let mut patched = patched;
        check_type_meta(info, &mut patched, info.kind)?;
        if meta_str(&patched, "name") != Some(name.as_str()) {
            return Err(ApiError::BadRequest(
                "metadata.name may not be changed by a patch".into(),
            ));
        }
        let patched = typed(info, patched, strict(query))?;
        let new = merge_update(info, t.sub.as_deref(), &old, patched);
        match write_update(state, t, &current, &old, new, query).await {
            Ok((_, v)) => return Ok(v),
            Err(ApiError::Conflict { .. }) if pinned.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(conflict(info, &name))
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
        .map(|m| {
            let mut parts: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            parts.sort();
            parts.join(",")
        })
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.get("spec").and_then(|s| s.get("replicas")).cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.get("status").and_then(|s| s.get("replicas")).cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

async fn update_scale(
    state: &AppState,
    t: &Target,
    compute: impl Fn(Value) -> ApiResult<Value>,
) -> ApiResult<Value> {
    let name = t.name.clone().unwrap_or_default();
    for _ in 0..16 {
        let current = get_kv(state, t)?;
        let old = object::from_store(&current)?;
        let scale = compute(scale_of(&old))?;
        let replicas = scale.get("spec").and_then(|s| s.get("replicas"));
        let replicas = match replicas {
            Some(r) => r
                .as_i64()
                .filter(|r| *r >= 0 && *r <= i32::MAX as i64)
                .ok_or_else(|| {
                    invalid(
                        t.info,
                        &name,
                        vec![Cause::invalid(
                            "spec.replicas",
                            r,
                            "must be greater than or equal to 0",
                        )],
                    )
                })?,
            None => 0,
        };
        if let Some(rv) = scale
            .get("metadata")
            .and_then(|m| m.get("resourceVersion"))
            .and_then(Value::as_str)
        {
            if !rv.is_empty() && rv != current.mod_revision.to_string() {
                return Err(conflict(t.info, &name));
            }
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(replicas);
        let main = Target {
            info: t.info,
            namespace: t.namespace.clone(),
            name: t.name.clone(),
            sub: None,
        };
        match write_update(state, &main, &current, &old, new, &Query::new()).await {
            Ok((_, v)) => return Ok(scale_of(&v)),
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(conflict(t.info, &name))
}

/// Bind a pod to a node (the `pods/binding` subresource).
pub async fn bind(state: &AppState, t: &Target, binding: Value) -> ApiResult<()> {
    let name = t.name.clone().unwrap_or_default();
    let node = binding
        .get("target")
        .and_then(|x| x.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid(t.info, &name, vec![Cause::required("target.name")]))?
        .to_string();
    for _ in 0..16 {
        let current = get_kv(state, t)?;
        let old = object::from_store(&current)?;
        if let Some(cur) = old
            .get("spec")
            .and_then(|s| s.get("nodeName"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            return Err(ApiError::Conflict {
                group: String::new(),
                resource: "pods".into(),
                name: name.clone(),
                message: format!("pod {name} is already assigned to node \"{cur}\""),
            });
        }
        if old
            .get("metadata")
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some()
        {
            return Err(ApiError::Conflict {
                group: String::new(),
                resource: "pods".into(),
                name: name.clone(),
                message: "pod is being deleted, cannot be assigned to a host".into(),
            });
        }
        let mut new = old;
        new["spec"]["nodeName"] = json!(node);
        let conds = new["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut conds: Vec<Value> = conds
            .into_iter()
            .filter(|c| c.get("type") != Some(&json!("PodScheduled")))
            .collect();
        conds.push(json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": object::now_rfc3339()}));
        new["status"]["conditions"] = Value::Array(conds);
        let key = t.info.key(t.namespace.as_deref(), &name);
        match state
            .store
            .txn(vec![Op::Put {
                key,
                value: object::to_store(&mut new),
                precondition: Precondition::ModRevision(current.mod_revision),
            }])
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(conflict(t.info, &name))
}

/// Delete one object honouring finalizers, graceful pod deletion and
/// DeleteOptions (preconditions, propagationPolicy, gracePeriodSeconds).
pub async fn delete(
    state: &AppState,
    t: &Target,
    opts: &Value,
    query: &Query,
) -> ApiResult<(StatusCode, Value)> {
    let info = t.info;
    let name = t.name.clone().unwrap_or_default();
    let policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .or_else(|| query.get("propagationPolicy").map(String::as_str))
        .map(str::to_string)
        .or_else(
            || match opts.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                _ => None,
            },
        );
    if let Some(p) = &policy {
        if !["Orphan", "Background", "Foreground"].contains(&p.as_str()) {
            return Err(invalid(
                info,
                &name,
                vec![Cause::not_supported(
                    "propagationPolicy",
                    p,
                    &["Background", "Foreground", "Orphan"],
                )],
            ));
        }
    }
    let grace = opts
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| query.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    for _ in 0..16 {
        let current = get_kv(state, t)?;
        let old = object::from_store(&current)?;
        crate::admission::admit_delete(state, t, &old, dry_run(query)).await?;
        if let Some(pre) = opts.get("preconditions") {
            if let Some(uid) = pre.get("uid").and_then(Value::as_str) {
                if meta_str(&old, "uid") != Some(uid) {
                    return Err(ApiError::Conflict {
                        group: info.group.into(), resource: info.plural.into(), name: name.clone(),
                        message: format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", meta_str(&old, "uid").unwrap_or("")),
                    });
                }
            }
            if let Some(rv) = pre.get("resourceVersion").and_then(Value::as_str) {
                if rv != current.mod_revision.to_string() {
                    return Err(ApiError::Conflict {
                        group: info.group.into(), resource: info.plural.into(), name: name.clone(),
                        message: format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", current.mod_revision),
                    });
                }
            }
        }
        let mut new = old.clone();
        let m = meta_mut(&mut new);
        let mut finalizers: Vec<Value> = m
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // propagationPolicy is recorded as Kubernetes does: as a finalizer the
        // garbage collector acts on.
        let gc_finalizer = match policy.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = gc_finalizer {
            if !finalizers.iter().any(|x| x == f) {
                finalizers.push(json!(f));
            }
        }
        let already = m.contains_key("deletionTimestamp");
        let ns_pending = info.kind == "Namespace";
        let pod_grace = if info.kind == "Pod" {
            let bound = old
                .get("spec")
                .and_then(|s| s.get("nodeName"))
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            let phase = old
                .get("status")
                .and_then(|s| s.get("phase"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let g = grace.unwrap_or_else(|| {
                old.get("spec")
                    .and_then(|s| s.get("terminationGracePeriodSeconds"))
                    .and_then(Value::as_i64)
                    .unwrap_or(30)
            });
            if bound && phase != "Succeeded" && phase != "Failed" && g > 0 {
                Some(g)
            } else {
                None
            }
        } else {
            None
        };
        let key = info.key(t.namespace.as_deref(), &name);
        if finalizers.is_empty() && !ns_pending && pod_grace.is_none() {
            if dry_run(query) {
                return Ok((StatusCode::OK, old));
            }
            match state
                .store
                .txn(vec![Op::Delete {
                    key,
                    precondition: Precondition::ModRevision(current.mod_revision),
                }])
                .await
            {
                Ok(_) => {
                    super::services::released(state, info, &old);
                    return Ok((StatusCode::OK, old));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        // Deletion is pending: mark it and let finalizers, the namespace
        // controller or the node finish it.
        if !already {
            let now = object::now_rfc3339();
            let (ts, g) = match pod_grace {
                Some(g) => (
                    (chrono::Utc::now() + chrono::Duration::seconds(g))
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    g,
                ),
                None => (now, 0),
            };
            m.insert("deletionTimestamp".into(), json!(ts));
            m.insert("deletionGracePeriodSeconds".into(), json!(g));
        } else if let (Some(g), Some(cur)) = (
            pod_grace,
            m.get("deletionGracePeriodSeconds").and_then(Value::as_i64),
        ) {
            // A shorter grace period may replace a longer one.
            if g < cur {
                m.insert("deletionGracePeriodSeconds".into(), json!(g));
            }
        }
        if !finalizers.is_empty() {
            m.insert("finalizers".into(), Value::Array(finalizers));
        }
        if info.kind == "Namespace" {
            new["status"]["phase"] = json!("Terminating");
        }
        if new == old {
            return Ok((StatusCode::OK, old));
        }
        if dry_run(query) {
            return Ok((StatusCode::OK, new));
        }
        match state
            .store
            .txn(vec![Op::Put {
                key,
                value: object::to_store(&mut new),
                precondition: Precondition::ModRevision(current.mod_revision),
            }])
            .await
        {
            Ok(r) => {
                object::set_resource_version(&mut new, r.revision);
                return Ok((StatusCode::OK, new));
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(conflict(info, &name))
}

async fn delete_collection(
    state: &AppState,
    t: &Target,
    opts: &Value,
    query: &Query,
) -> ApiResult<Value> {
    let sel = Selectors::from_query(t.info, query)?;
    let list = state
        .store
        .list(&t.info.prefix(t.namespace.as_deref()), None, 0, None)?;
    let mut items = Vec::new();
    for kv in &list.items {
        let obj = object::from_store(kv)?;
        if !sel.matches(&obj) {
            continue;
        }
        let one = Target {
            info: t.info,
            namespace: meta_str(&obj, "namespace").map(str::to_string),
            name: meta_str(&obj, "name").map(str::to_string),
            sub: None,
        };
        match delete(state, &one, opts, query).await {
            Ok((_, v)) => items.push(v),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json!({
        "kind": format!("{}List", t.info.kind),
        "apiVersion": t.info.api_version(),
        "metadata": {"resourceVersion": state.store.current_revision().to_string()},
        "items": items,
    }))
}
