//! authentication.k8s.io: the `serviceaccounts/token` subresource
//! (TokenRequest, `kubectl create token`), TokenReview, and SelfSubjectReview
//! (`kubectl auth whoami`). None of them is stored.

use super::error::{ApiError, ApiResult, Cause};
use super::handlers::{decode_body, read_body, Target};
use super::object;
use super::resources;
use super::AppState;
use crate::auth::{
    Bound, Identity, NameUid, ServiceAccountTokens, DEFAULT_EXPIRATION_SECONDS,
    MIN_EXPIRATION_SECONDS,
};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{header, Method, StatusCode};
use serde_json::{json, Value};

/// Longest TokenRequest lifetime Kubernetes accepts (2^32 seconds).
const MAX_EXPIRATION_SECONDS: i64 = 1 << 32;

/// Whether this module serves the request's target.
pub fn serves(t: &Target) -> bool {
    (t.info.group.is_empty()
        && t.info.plural == "serviceaccounts"
        && t.sub.as_deref() == Some("token"))
        || t.info.group == "authentication.k8s.io"
}

fn created(v: &Value) -> Response {
    let body = serde_json::to_vec(v).expect("a Value always serializes");
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn tokens(state: &AppState) -> ApiResult<&ServiceAccountTokens> {
    state
        .hooks
        .authn
        .as_deref()
        .and_then(|a| a.service_accounts())
        .ok_or_else(|| ApiError::Unavailable("service account tokens are not configured".into()))
}

fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Serve a request [`serves`] accepted.
pub async fn serve(
    state: &AppState,
    method: &Method,
    t: &Target,
    req: Request<Body>,
) -> ApiResult<Response> {
    if method != Method::POST {
        return Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({method})"
        )));
    }
    let identity = req.extensions().get::<Identity>().cloned();
    let (ct, body) = read_body(state, req).await?;
    let obj = decode_body(&ct, &body)?;
    let kind = match t.info.plural {
        "serviceaccounts" => "TokenRequest",
        _ => t.info.kind,
    };
    check_shape(&obj, kind)?;
    match t.info.plural {
        "serviceaccounts" => token_request(state, t, obj).map(|v| created(&v)),
        "tokenreviews" => token_review(state, obj).map(|v| created(&v)),
        "selfsubjectreviews" => {
            let id = identity.ok_or(ApiError::Unauthorized)?;
            Ok(created(&json!({
                "kind": "SelfSubjectReview",
                "apiVersion": "authentication.k8s.io/v1",
                "metadata": {"creationTimestamp": object::now_rfc3339()},
                "status": {"userInfo": user_info(&id)},
            })))
        }
        _ => Err(ApiError::PathNotFound(
            "the server could not find the requested resource".into(),
        )),
    }
}

/// `UserInfo` of authentication.k8s.io/v1.
pub fn user_info(id: &Identity) -> Value {
    let mut u = json!({"username": id.user, "groups": id.groups});
    if !id.uid.is_empty() {
        u["uid"] = json!(id.uid);
    }
    if !id.extra.is_empty() {
        u["extra"] = json!(id.extra);
    }
    u
}

fn get(state: &AppState, plural: &str, ns: &str, name: &str) -> ApiResult<Option<Value>> {
    let info = resources::lookup("", "v1", plural).expect("core kinds are served");
    Ok(state
        .store
        .get(&info.key(Some(ns), name))?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

fn invalid_request(name: &str, causes: Vec<Cause>) -> ApiError {
    ApiError::Invalid {
        group: "authentication.k8s.io".into(),
        kind: "TokenRequest".into(),
        name: name.into(),
        causes,
    }
}

/// A body must be an object of the kind this endpoint takes, with an object
/// (or no) `spec`: anything else is the client's mistake, a 400.
fn check_shape(obj: &Value, kind: &str) -> ApiResult<()> {
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != kind {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({kind}) for this resource"
            )));
        }
    }
    let bad_spec = obj
        .get("spec")
        .is_some_and(|s| !s.is_object() && !s.is_null());
    if !obj.is_object() || bad_spec {
        return Err(ApiError::BadRequest(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {} must be an object",
            if bad_spec { "spec" } else { "the body" }
        )));
    }
    Ok(())
}

fn token_request(state: &AppState, t: &Target, req: Value) -> ApiResult<Value> {
    let tokens = tokens(state)?;
    let ns = t.namespace.as_deref().unwrap_or("");
    let name = t.name.as_deref().unwrap_or("");
    let sa = get(state, "serviceaccounts", ns, name)?.ok_or_else(|| ApiError::NotFound {
        group: String::new(),
        resource: "serviceaccounts".into(),
        name: name.into(),
    })?;
    let spec = req.get("spec").cloned().unwrap_or_else(|| json!({}));
    let exp = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_EXPIRATION_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            invalid_request(
                name,
                vec![Cause::invalid(
                    "spec.expirationSeconds",
                    v,
                    "must be an integer",
                )],
            )
        })?,
    };
    if exp < MIN_EXPIRATION_SECONDS {
        return Err(invalid_request(
            name,
            vec![Cause::invalid(
                "spec.expirationSeconds",
                exp,
                "may not specify a duration less than 10 minutes",
            )],
        ));
    }
    if exp > MAX_EXPIRATION_SECONDS {
        return Err(invalid_request(
            name,
            vec![Cause::invalid(
                "spec.expirationSeconds",
                exp,
                "may not specify a duration larger than 2^32 seconds",
            )],
        ));
    }
    let mut audiences = Vec::new();
    for (i, a) in spec
        .get("audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match a.as_str() {
            Some(s) if !s.is_empty() => audiences.push(s.to_string()),
            _ => {
                return Err(invalid_request(
                    name,
                    vec![Cause::invalid(
                        format!("spec.audiences[{i}]"),
                        a,
                        "must be a non-empty string",
                    )],
                ))
            }
        }
    }
    if audiences.is_empty() {
        audiences = tokens.api_audiences().to_vec();
    }
    let sa_ref = NameUid {
        name: name.into(),
        uid: object::meta_str(&sa, "uid").unwrap_or("").into(),
    };
    let mut bound_ref = spec.get("boundObjectRef").cloned().filter(|v| !v.is_null());
    let bound = match &mut bound_ref {
        None => None,
        Some(r) => Some(bound_object(state, ns, name, r)?),
    };
    let (token, exp_at) = tokens
        .issue(ns, &sa_ref, &audiences, exp, bound.as_ref())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut out_spec = json!({"audiences": audiences, "expirationSeconds": exp});
    if let Some(r) = bound_ref {
        out_spec["boundObjectRef"] = r;
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": object::now_rfc3339()},
        "spec": out_spec,
        "status": {"token": token, "expirationTimestamp": rfc3339(exp_at)},
    }))
}

/// Check `boundObjectRef` (filling in its uid) and return what the token binds to.
fn bound_object(state: &AppState, ns: &str, sa: &str, r: &mut Value) -> ApiResult<Bound> {
    let kind = r
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let obj_name = r
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let plural = match kind.as_str() {
        "Pod" => "pods",
        "Secret" => "secrets",
        other => {
            return Err(ApiError::BadRequest(format!(
                "cannot bind token for serviceaccount \"{sa}\" to object of type {other:?}: only Pod and Secret are supported"
            )))
        }
    };
    if obj_name.is_empty() {
        return Err(invalid_request(
            sa,
            vec![Cause::required("spec.boundObjectRef.name")],
        ));
    }
    let obj = get(state, plural, ns, &obj_name)?.ok_or_else(|| ApiError::NotFound {
        group: String::new(),
        resource: plural.into(),
        name: obj_name.clone(),
    })?;
    let uid = object::meta_str(&obj, "uid").unwrap_or("").to_string();
    if let Some(want) = r
        .get("uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    {
        if want != uid {
            return Err(ApiError::Conflict {
                group: String::new(),
                resource: plural.into(),
                name: obj_name,
                message: format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            });
        }
    }
    if kind == "Pod" {
        let pod_sa = obj
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if pod_sa != sa {
            return Err(ApiError::BadRequest(format!(
                "cannot bind token for serviceaccount \"{sa}\" to pod running with different serviceaccount name."
            )));
        }
    }
    r["uid"] = json!(uid);
    if r.get("apiVersion").is_none_or(Value::is_null) {
        r["apiVersion"] = json!("v1");
    }
    let nu = NameUid {
        name: obj_name,
        uid,
    };
    Ok(if kind == "Pod" {
        Bound::Pod(nu)
    } else {
        Bound::Secret(nu)
    })
}

fn token_review(state: &AppState, req: Value) -> ApiResult<Value> {
    let token = req
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    let audiences: Vec<String> = req
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let authn = state.hooks.authn.as_deref();
    let mut status = json!({"authenticated": false});
    if token.is_empty() {
        status["error"] = json!("token is empty");
    } else if audiences.is_empty() {
        // The API's own audiences: every bearer authenticator applies.
        match authn.and_then(|a| a.authenticate_bearer(token)) {
            Some(id) => {
                status = json!({"authenticated": true, "user": user_info(&id)});
                if let Some(t) = authn.and_then(|a| a.service_accounts()) {
                    status["audiences"] = json!(t.api_audiences());
                }
            }
            None => status["error"] = json!("invalid bearer token"),
        }
    } else {
        // Other audiences: only service-account tokens can carry them.
        let t = tokens(state)?;
        match t.validate(token, Some(&audiences)) {
            Ok((id, _)) => {
                let aud = claimed_audiences(token)
                    .into_iter()
                    .filter(|a| audiences.contains(a))
                    .collect::<Vec<_>>();
                status = json!({"authenticated": true, "user": user_info(&id), "audiences": aud});
            }
            Err(e) => status["error"] = json!(e.to_string()),
        }
    }
    let mut out = req;
    out["kind"] = json!("TokenReview");
    out["apiVersion"] = json!("authentication.k8s.io/v1");
    out["status"] = status;
    if !out.get("metadata").is_some_and(Value::is_object) {
        out["metadata"] = json!({});
    }
    out["metadata"]["creationTimestamp"] = json!(object::now_rfc3339());
    Ok(out)
}

fn claimed_audiences(token: &str) -> Vec<String> {
    use base64::Engine;
    token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("aud").cloned())
        .and_then(|a| serde_json::from_value(a).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::check_shape;
    use serde_json::json;

    #[test]
    fn bodies_of_the_wrong_shape_are_refused() {
        assert!(check_shape(&json!({"kind": "TokenRequest", "spec": {}}), "TokenRequest").is_ok());
        assert!(check_shape(&json!({"spec": {"token": "t"}}), "TokenReview").is_ok());
        let e = check_shape(&json!({"kind": "X"}), "TokenRequest").unwrap_err();
        assert!(format!("{e:?}").contains("does not match"), "{e:?}");
        let e = check_shape(&json!({"spec": 5}), "TokenReview").unwrap_err();
        assert!(format!("{e:?}").contains("spec must be an object"), "{e:?}");
        assert!(check_shape(&json!([1]), "TokenRequest").is_err());
    }
}
