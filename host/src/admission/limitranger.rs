//! LimitRanger: applies a namespace's LimitRange `default` (limits) and
//! `defaultRequest` (requests) to the containers of new pods, then enforces
//! `min`, `max` and `maxLimitRequestRatio` per Container and per Pod, with
//! Kubernetes' messages (403 Forbidden).

use super::{Attributes, Builtin, Operation};
use crate::api::error::{ApiError, ApiResult};
use crate::api::AppState;
use scheduler_core::quantity;
use serde_json::{json, Map, Value};

/// The LimitRanger built-in.
pub struct LimitRanger;

fn applies(attrs: &Attributes<'_>) -> bool {
    attrs.operation == Operation::Create
        && attrs.info.group.is_empty()
        && attrs.info.kind == "Pod"
        && attrs.subresource.is_empty()
        && !attrs.namespace.is_empty()
}

/// The `spec.limits` items of every LimitRange in `ns`.
fn limit_items(state: &AppState, ns: &str) -> ApiResult<Vec<Value>> {
    let list = state
        .store
        .list(&format!("/core/limitranges/{ns}/"), None, 0, None)?;
    let mut items = Vec::new();
    for kv in &list.items {
        let lr: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
        items.extend(
            lr.pointer("/spec/limits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        );
    }
    Ok(items)
}

fn nanos(v: &Value) -> Option<i128> {
    quantity::parse(v.as_str()?.trim()).ok().map(|q| q.nanos())
}

fn map<'a>(v: &'a Value, key: &str) -> Option<&'a Map<String, Value>> {
    v.get(key).and_then(Value::as_object)
}

fn containers_mut(obj: &mut Value) -> Vec<&mut Value> {
    let spec = &mut obj["spec"];
    let mut out = Vec::new();
    if let Some(o) = spec.as_object_mut() {
        for (k, v) in o.iter_mut() {
            if k == "containers" || k == "initContainers" {
                if let Some(a) = v.as_array_mut() {
                    out.extend(a.iter_mut());
                }
            }
        }
    }
    out
}

impl Builtin for LimitRanger {
    fn name(&self) -> &'static str {
        "LimitRanger"
    }

    fn admit(
        &self,
        state: &AppState,
        attrs: &Attributes<'_>,
        obj: &mut Value,
        _old: Option<&Value>,
    ) -> ApiResult<bool> {
        if !applies(attrs) {
            return Ok(false);
        }
        let items = limit_items(state, attrs.namespace)?;
        let mut notes = Vec::new();
        for item in items
            .iter()
            .filter(|i| i.get("type").and_then(Value::as_str) == Some("Container"))
        {
            let default = map(item, "default");
            let default_request = map(item, "defaultRequest");
            for c in containers_mut(obj) {
                let cname = c
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let (mut set_req, mut set_lim) = (Vec::new(), Vec::new());
                for (res, v) in default.into_iter().flatten() {
                    if c.pointer(&format!("/resources/limits/{res}")).is_none() {
                        c["resources"]["limits"][res] = v.clone();
                        set_lim.push(res.clone());
                    }
                }
                // A request defaults to defaultRequest, else to the default limit.
                let mut request_defaults: Vec<(&String, &Value)> =
                    default_request.into_iter().flatten().collect();
                for (res, v) in default.into_iter().flatten() {
                    if !default_request.is_some_and(|d| d.contains_key(res)) {
                        request_defaults.push((res, v));
                    }
                }
                for (res, v) in request_defaults {
                    if c.pointer(&format!("/resources/requests/{res}")).is_none() {
                        c["resources"]["requests"][res] = v.clone();
                        set_req.push(res.clone());
                    }
                }
                if !set_req.is_empty() {
                    notes.push(format!(
                        "{} request for container {cname}",
                        set_req.join(", ")
                    ));
                }
                if !set_lim.is_empty() {
                    notes.push(format!(
                        "{} limit for container {cname}",
                        set_lim.join(", ")
                    ));
                }
            }
        }
        if notes.is_empty() {
            return Ok(false);
        }
        obj["metadata"]["annotations"]["kubernetes.io/limit-ranger"] =
            json!(format!("LimitRanger plugin set: {}", notes.join("; ")));
        Ok(true)
    }

    fn validate(
        &self,
        state: &AppState,
        attrs: &Attributes<'_>,
        obj: Option<&Value>,
        _old: Option<&Value>,
    ) -> ApiResult<()> {
        let Some(obj) = obj.filter(|_| applies(attrs)) else {
            return Ok(());
        };
        let items = limit_items(state, attrs.namespace)?;
        if items.is_empty() {
            return Ok(());
        }
        let containers: Vec<&Value> = ["containers", "initContainers"]
            .iter()
            .filter_map(|k| obj.pointer(&format!("/spec/{k}")).and_then(Value::as_array))
            .flatten()
            .collect();
        let mut errs = Vec::new();
        for item in &items {
            match item.get("type").and_then(Value::as_str) {
                Some("Container") => {
                    for c in &containers {
                        let req = c
                            .pointer("/resources/requests")
                            .cloned()
                            .unwrap_or(json!({}));
                        let lim = c.pointer("/resources/limits").cloned().unwrap_or(json!({}));
                        check(item, "Container", &req, &lim, &mut errs);
                    }
                }
                Some("Pod") => {
                    // Pod totals: the sum over containers (init containers
                    // run one at a time, so the larger of the two counts).
                    let (mut req, mut lim) = (Map::new(), Map::new());
                    for (total, key) in [(&mut req, "requests"), (&mut lim, "limits")] {
                        for (r, n) in super::quota::container_totals(obj, key) {
                            total.insert(r, json!(super::format_quantity(n)));
                        }
                    }
                    check(
                        item,
                        "Pod",
                        &Value::Object(req),
                        &Value::Object(lim),
                        &mut errs,
                    );
                }
                _ => {}
            }
        }
        if errs.is_empty() {
            return Ok(());
        }
        let joined = if errs.len() == 1 {
            errs.remove(0)
        } else {
            format!("[{}]", errs.join(", "))
        };
        Err(ApiError::Forbidden(format!(
            "pods \"{}\" is forbidden: {joined}",
            attrs.name_or(obj)
        )))
    }
}

impl Attributes<'_> {
    /// The request's name, else the object's.
    fn name_or<'b>(&'b self, obj: &'b Value) -> &'b str {
        match self.name {
            "" => crate::api::object::meta_str(obj, "name").unwrap_or(""),
            n => n,
        }
    }
}

/// Kubernetes' min, max and ratio checks of one LimitRange item.
fn check(item: &Value, what: &str, req: &Value, lim: &Value, errs: &mut Vec<String>) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    for (res, min) in map(item, "min").into_iter().flatten() {
        match req.get(res) {
            None => errs.push(format!(
                "minimum {res} usage per {what} is {}.  No request is specified",
                text(min)
            )),
            Some(r) if nanos(r) < nanos(min) => errs.push(format!(
                "minimum {res} usage per {what} is {}, but request is {}",
                text(min),
                text(r)
            )),
            _ => {}
        }
    }
    for (res, max) in map(item, "max").into_iter().flatten() {
        match lim.get(res) {
            None => errs.push(format!(
                "maximum {res} usage per {what} is {}.  No limit is specified",
                text(max)
            )),
            Some(l) if nanos(l) > nanos(max) => errs.push(format!(
                "maximum {res} usage per {what} is {}, but limit is {}",
                text(max),
                text(l)
            )),
            _ => {}
        }
    }
    for (res, ratio) in map(item, "maxLimitRequestRatio").into_iter().flatten() {
        let (Some(l), Some(max)) = (lim.get(res).and_then(nanos), nanos(ratio)) else {
            continue;
        };
        match req.get(res).and_then(nanos).filter(|r| *r > 0) {
            None => errs.push(format!(
                "{res} max limit to request ratio per {what} is {}, but no request is specified or request is 0",
                text(ratio)
            )),
            Some(r) => {
                let actual = l as f64 / r as f64;
                if actual > max as f64 / 1e9 {
                    errs.push(format!(
                        "{res} max limit to request ratio per {what} is {}, but provided ratio is {actual:.6}",
                        text(ratio)
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_and_ratio_messages() {
        let item = json!({"type": "Container", "min": {"cpu": "100m"}, "max": {"memory": "1Gi"}, "maxLimitRequestRatio": {"cpu": "2"}});
        let mut errs = Vec::new();
        check(
            &item,
            "Container",
            &json!({"cpu": "50m"}),
            &json!({"cpu": "200m", "memory": "2Gi"}),
            &mut errs,
        );
        assert_eq!(
            errs,
            [
                "minimum cpu usage per Container is 100m, but request is 50m",
                "maximum memory usage per Container is 1Gi, but limit is 2Gi",
                "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
            ]
        );
        let mut errs = Vec::new();
        check(&item, "Container", &json!({}), &json!({}), &mut errs);
        assert_eq!(
            errs,
            [
                "minimum cpu usage per Container is 100m.  No request is specified",
                "maximum memory usage per Container is 1Gi.  No limit is specified",
            ]
        );
        let mut ok = Vec::new();
        check(
            &item,
            "Container",
            &json!({"cpu": "100m"}),
            &json!({"cpu": "200m", "memory": "1Gi"}),
            &mut ok,
        );
        assert!(ok.is_empty(), "{ok:?}");
    }
}
