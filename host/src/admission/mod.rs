//! The admission chain, in Kubernetes' order, for create, update (and patch),
//! delete and connect requests:
//!
//! 1. NamespaceLifecycle (`check_namespace` in api/handlers.rs, run first on create);
//! 2. mutating built-ins: ServiceAccount (api/serviceaccount_admission.rs,
//!    called from `create` just before this chain), LimitRanger defaults;
//! 3. mutating Wasm plugins, by `spec.order`, each seeing the previous one's patch;
//! 4. the API server's own defaulting and validation of the result;
//! 5. validating built-ins (LimitRanger limits, [`BUILTINS`]), then the
//!    validating Wasm plugins, then ResourceQuota, last as in Kubernetes.
//!
//! Built-in plugins written elsewhere (NodeRestriction) plug in through the
//! [`Builtin`] trait and one line in [`BUILTINS`].

pub mod limitranger;
pub mod quota;
pub mod spec;
mod view;
pub mod wasm;

pub use spec::{AdmissionSpec, FailurePolicy, PluginType};
pub use wasm::WasmChain;

use crate::api::error::{ApiError, ApiResult};
use crate::api::handlers::Target;
use crate::api::object::meta_str;
use crate::api::resources::ResourceInfo;
use crate::api::AppState;
use crate::auth::Identity;
use crate::plugin::{AdmissionResponse, PluginError};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::{Arc, Mutex};
use wasm::AdmissionPlugin;

/// An admission operation (Kubernetes' names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// POST of a new object.
    Create,
    /// PUT or PATCH of an existing object.
    Update,
    /// DELETE of an object.
    Delete,
    /// A connection to a pod (exec, attach, portforward).
    Connect,
}

impl Operation {
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }

    fn options_kind(self) -> &'static str {
        match self {
            Operation::Create => "CreateOptions",
            Operation::Update => "UpdateOptions",
            Operation::Delete => "DeleteOptions",
            Operation::Connect => "",
        }
    }
}

/// Who made the request, as AdmissionReview's `userInfo` carries it.
#[derive(Debug, Clone)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// Groups.
    pub groups: Vec<String>,
}

/// What a request being admitted is about.
#[derive(Debug, Clone, Copy)]
pub struct Attributes<'a> {
    /// The resource.
    pub info: &'static ResourceInfo,
    /// Subresource ("" for the main resource).
    pub subresource: &'a str,
    /// Namespace ("" for cluster-scoped).
    pub namespace: &'a str,
    /// Object name ("" when the server generates it).
    pub name: &'a str,
    /// The operation.
    pub operation: Operation,
    /// `dryRun=All`: plugins must not have side effects.
    pub dry_run: bool,
}

impl<'a> Attributes<'a> {
    /// Attributes of a request on `t`.
    pub fn of(t: &'a Target, operation: Operation, dry_run: bool) -> Attributes<'a> {
        Attributes {
            info: t.info,
            subresource: t.sub.as_deref().unwrap_or(""),
            namespace: t.namespace.as_deref().unwrap_or(""),
            name: t.name.as_deref().unwrap_or(""),
            operation,
            dry_run,
        }
    }
}

/// The labels of a namespace (`None`: no such namespace, or no labels).
type Labels = Option<serde_json::Map<String, Value>>;

/// The request's user, the warnings the chain collects for its response, and
/// the labels of the namespace its namespaceSelectors were matched against
/// (read once per request: both phases see the same labels).
struct RequestContext {
    user: UserInfo,
    warnings: Mutex<Vec<String>>,
    namespace_labels: Mutex<Option<(String, Labels)>>,
}

tokio::task_local! {
    static REQUEST: RequestContext;
}

/// Run one API request's handling with its identity in scope; returns the
/// handler's output and the admission warnings to send as `Warning` headers.
pub async fn scope<F: Future>(identity: &Identity, fut: F) -> (F::Output, Vec<String>) {
    let ctx = RequestContext {
        user: UserInfo {
            username: identity.user.clone(),
            groups: identity.groups.clone(),
        },
        warnings: Mutex::new(Vec::new()),
        namespace_labels: Mutex::new(None),
    };
    REQUEST
        .scope(ctx, async {
            let out = fut.await;
            let warnings = REQUEST.with(|c| {
                std::mem::take(&mut *c.warnings.lock().unwrap_or_else(|e| e.into_inner()))
            });
            (out, warnings)
        })
        .await
}

/// The requesting user; in-process controllers (outside any request) act as
/// `system:kube-controller-manager`, as Kubernetes' controllers do.
pub fn current_user() -> UserInfo {
    REQUEST
        .try_with(|c| c.user.clone())
        .unwrap_or_else(|_| UserInfo {
            username: "system:kube-controller-manager".into(),
            groups: vec!["system:authenticated".into()],
        })
}

fn add_warnings(w: impl IntoIterator<Item = String>) {
    let _ = REQUEST.try_with(|c| {
        c.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(w)
    });
}

/// Add `Warning: 299 - "<text>"` headers (RFC 7234), as kube-apiserver does.
pub fn add_warning_headers(headers: &mut http::HeaderMap, warnings: &[String]) {
    for w in warnings {
        let text: String = w
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .take(4096)
            .collect::<String>()
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            headers.append(http::header::WARNING, v);
        }
    }
}

/// A built-in admission plugin compiled into the host.
pub trait Builtin: Send + Sync {
    /// Name, for errors and logs.
    fn name(&self) -> &'static str;
    /// Mutating phase: may change `obj` (create and update); returns whether it did.
    fn admit(
        &self,
        _state: &AppState,
        _attrs: &Attributes<'_>,
        _obj: &mut Value,
        _old: Option<&Value>,
    ) -> ApiResult<bool> {
        Ok(false)
    }
    /// Validating phase: may refuse the request.
    fn validate(
        &self,
        _state: &AppState,
        _attrs: &Attributes<'_>,
        _obj: Option<&Value>,
        _old: Option<&Value>,
    ) -> ApiResult<()> {
        Ok(())
    }
}

/// The built-ins in Kubernetes' order (ResourceQuota, which writes, runs
/// separately at the very end). NodeRestriction goes after LimitRanger.
pub static BUILTINS: &[&dyn Builtin] = &[&limitranger::LimitRanger];

/// Mutating phase for a create or an update: built-ins, then the mutating
/// Wasm plugins. Returns the object to store; on create, an object they
/// changed is defaulted and validated again (update's own validation follows).
pub async fn mutate(
    state: &AppState,
    attrs: &Attributes<'_>,
    obj: Value,
    old: Option<&Value>,
) -> ApiResult<Value> {
    let (mut obj, changed) = mutate_only(state, attrs, obj, old).await?;
    if changed && attrs.operation == Operation::Create {
        crate::api::validation::default_object(attrs.info, &mut obj);
        let causes = crate::api::validation::validate(attrs.info, &obj);
        if !causes.is_empty() {
            return Err(ApiError::Invalid {
                group: attrs.info.group.into(),
                kind: attrs.info.kind.into(),
                name: meta_str(&obj, "name").unwrap_or("").into(),
                causes,
            });
        }
    }
    Ok(obj)
}

async fn mutate_only(
    state: &AppState,
    attrs: &Attributes<'_>,
    mut obj: Value,
    old: Option<&Value>,
) -> ApiResult<(Value, bool)> {
    let mut changed = false;
    for b in BUILTINS {
        changed |= b.admit(state, attrs, &mut obj, old)?;
    }
    let Some(chain) = state.hooks.admission.as_ref().map(|c| c.current()) else {
        return Ok((obj, changed));
    };
    let plugins = matching(state, &chain.mutating, attrs);
    if plugins.is_empty() {
        return Ok((obj, changed));
    }
    // The request is serialized once, and again only after a patch.
    let review = ReviewText::new(attrs, Some(&obj), old);
    let info = attrs.info;
    let mut warnings = Vec::new();
    let result = async {
        let mut text = review.with(Some(&obj));
        let mut patched = false;
        for p in &plugins {
            let Some(resp) = call(p, &text).await? else {
                continue;
            };
            warnings.extend(resp.warnings.iter().map(|w| w.to_string()));
            if !resp.allowed {
                return Err(denied(p, &resp));
            }
            if let Some(patch) = resp.patch.as_deref().filter(|s| !s.trim().is_empty()) {
                let before = (obj["apiVersion"].clone(), obj["kind"].clone());
                let applied = wasm::apply_patch(&mut obj, patch).and_then(|()| {
                    if (obj["apiVersion"].clone(), obj["kind"].clone()) != before {
                        return Err("the patch may not change apiVersion or kind".into());
                    }
                    (info.check)(&obj)
                });
                if let Err(e) = applied {
                    return Err(ApiError::Internal(format!(
                        "admission plugin \"{}\" returned a patch that cannot be applied: {e}",
                        p.name
                    )));
                }
                text = review.with(Some(&obj));
                patched = true;
            }
        }
        Ok(patched)
    }
    .await;
    add_warnings(warnings);
    let patched = result?;
    Ok((obj, changed || patched))
}

/// Validating phase for a create, update or delete: built-ins, the validating
/// Wasm plugins, then ResourceQuota.
pub async fn validate(
    state: &AppState,
    attrs: &Attributes<'_>,
    obj: Option<&Value>,
    old: Option<&Value>,
) -> ApiResult<()> {
    for b in BUILTINS {
        b.validate(state, attrs, obj, old)?;
    }
    if let Some(chain) = state.hooks.admission.as_ref().map(|c| c.current()) {
        let mut plugins = matching(state, &chain.validating, attrs);
        // On delete and connect there is nothing to mutate; mutating plugins
        // still see the request and may refuse it.
        if matches!(attrs.operation, Operation::Delete | Operation::Connect) {
            let mut m = matching(state, &chain.mutating, attrs);
            m.append(&mut plugins);
            plugins = m;
        }
        if !plugins.is_empty() {
            let request = ReviewText::new(attrs, obj, old).with(obj);
            let mut warnings = Vec::new();
            let result = async {
                for p in &plugins {
                    let Some(resp) = call(p, &request).await? else {
                        continue;
                    };
                    warnings.extend(resp.warnings.iter().cloned());
                    if !resp.allowed {
                        return Err(denied(p, &resp));
                    }
                }
                Ok(())
            }
            .await;
            add_warnings(warnings);
            result?;
        }
    }
    if let (Operation::Create, Some(obj)) = (attrs.operation, obj) {
        quota::admit(state, attrs, obj).await?;
    }
    Ok(())
}

/// Admission of a delete: the plugins see the old object and may refuse.
pub async fn admit_delete(
    state: &AppState,
    t: &Target,
    old: &Value,
    dry_run: bool,
) -> ApiResult<()> {
    let attrs = Attributes::of(t, Operation::Delete, dry_run);
    validate(state, &attrs, None, Some(old)).await
}

/// Admission of a connection to a pod subresource (`exec`, `attach`,
/// `portforward`): the object is the connect options from the query.
pub async fn admit_connect(state: &AppState, t: &Target, query: Option<&str>) -> ApiResult<()> {
    let sub = t.sub.as_deref().unwrap_or("");
    let kind = match sub {
        "exec" => "PodExecOptions",
        "attach" => "PodAttachOptions",
        "portforward" => "PodPortForwardOptions",
        _ => return Ok(()),
    };
    let chain_empty = state
        .hooks
        .admission
        .as_ref()
        .is_none_or(|c| c.current().is_empty());
    if chain_empty {
        return Ok(());
    }
    let mut options = json!({"kind": kind, "apiVersion": "v1"});
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let v = match v.as_ref() {
            "true" | "1" => json!(true),
            "false" | "0" if k != "command" => json!(false),
            s => json!(s),
        };
        if k == "command" || k == "ports" {
            let list = options[k.as_ref()].as_array().cloned().unwrap_or_default();
            options[k.as_ref()] = Value::Array([list, vec![v]].concat());
        } else {
            options[k.as_ref()] = v;
        }
    }
    let attrs = Attributes::of(t, Operation::Connect, false);
    validate(state, &attrs, Some(&options), None).await
}

/// The plugins among `list` whose rules and namespace selector match.
fn matching(
    state: &AppState,
    list: &[Arc<AdmissionPlugin>],
    attrs: &Attributes<'_>,
) -> Vec<Arc<AdmissionPlugin>> {
    let info = attrs.info;
    let mut out = Vec::new();
    let mut ns_labels: Option<Option<serde_json::Map<String, Value>>> = None;
    for p in list {
        if !p.spec.matches(
            attrs.operation,
            info.group,
            info.version,
            info.plural,
            attrs.subresource,
        ) {
            continue;
        }
        if p.spec.namespace_selector.is_some() {
            // Cluster-scoped objects match any namespace selector, except a
            // Namespace, which is matched by its own labels (Kubernetes' rule).
            let ns = if info.kind == "Namespace" {
                attrs.name
            } else {
                attrs.namespace
            };
            if !ns.is_empty() {
                let labels = ns_labels.get_or_insert_with(|| request_namespace_labels(state, ns));
                if !p.spec.namespace_matches(labels.as_ref()) {
                    continue;
                }
            }
        }
        out.push(p.clone());
    }
    out
}

/// The labels of `ns`, read from the store once per request (and at every
/// call outside one).
fn request_namespace_labels(state: &AppState, ns: &str) -> Labels {
    REQUEST
        .try_with(|c| {
            let mut cached = c.namespace_labels.lock().unwrap_or_else(|e| e.into_inner());
            match &*cached {
                Some((name, labels)) if name == ns => labels.clone(),
                _ => {
                    let labels = namespace_labels(state, ns);
                    *cached = Some((ns.to_string(), labels.clone()));
                    labels
                }
            }
        })
        .unwrap_or_else(|_| namespace_labels(state, ns))
}

fn namespace_labels(state: &AppState, ns: &str) -> Labels {
    /// Only the labels of the Namespace are decoded; the rest is skipped.
    #[derive(serde::Deserialize)]
    struct Namespace {
        #[serde(default)]
        metadata: Metadata,
    }
    #[derive(serde::Deserialize, Default)]
    struct Metadata {
        #[serde(default)]
        labels: Labels,
    }
    let kv = state.store.get(&format!("/core/namespaces/{ns}")).ok()??;
    serde_json::from_slice::<Namespace>(&kv.value)
        .ok()?
        .metadata
        .labels
}

/// An AdmissionReview `request` for this request, serialized around its
/// object: the rest is serialized once per phase, and a patched object alone
/// again (without copying the object or the old object into a `Value`).
struct ReviewText {
    /// `{"uid": ..., "userInfo": {...}, "object":`
    head: String,
    /// `, "oldObject": ..., "dryRun": ...}` and the optional fields.
    tail: String,
}

impl ReviewText {
    fn new(attrs: &Attributes<'_>, obj: Option<&Value>, old: Option<&Value>) -> ReviewText {
        /// `{"group", "version", "kind"}` or `{..., "resource"}`.
        #[derive(serde::Serialize)]
        struct Gv<'a> {
            group: &'a str,
            version: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            kind: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            resource: Option<&'a str>,
        }
        #[derive(serde::Serialize)]
        struct User<'a> {
            username: &'a str,
            uid: &'a str,
            groups: &'a [String],
        }
        /// The request up to its object, borrowed: serialized without
        /// building a `Value` first.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Head<'a> {
            uid: &'a str,
            kind: &'a Gv<'a>,
            resource: &'a Gv<'a>,
            request_kind: &'a Gv<'a>,
            request_resource: &'a Gv<'a>,
            name: &'a str,
            namespace: &'a str,
            operation: &'a str,
            user_info: User<'a>,
        }
        #[derive(serde::Serialize)]
        struct Options<'a> {
            kind: &'a str,
            #[serde(rename = "apiVersion")]
            api_version: &'a str,
        }
        /// The fields after the old object.
        #[derive(serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Tail<'a> {
            dry_run: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            sub_resource: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            request_sub_resource: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            options: Option<Options<'a>>,
        }

        let info = attrs.info;
        let user = current_user();
        let kind = Gv {
            group: info.group,
            version: info.version,
            kind: Some(info.kind),
            resource: None,
        };
        let resource = Gv {
            group: info.group,
            version: info.version,
            kind: None,
            resource: Some(info.plural),
        };
        let name = match attrs.name {
            "" => obj.and_then(|o| meta_str(o, "name")).unwrap_or(""),
            n => n,
        };
        let mut uid = uuid::Uuid::encode_buffer();
        let head = Head {
            uid: uuid::Uuid::new_v4().hyphenated().encode_lower(&mut uid),
            kind: &kind,
            resource: &resource,
            request_kind: &kind,
            request_resource: &resource,
            name,
            namespace: attrs.namespace,
            operation: attrs.operation.as_str(),
            user_info: User {
                username: &user.username,
                uid: "",
                groups: &user.groups,
            },
        };
        let sub = Some(attrs.subresource).filter(|s| !s.is_empty());
        let options_kind = attrs.operation.options_kind();
        let tail = Tail {
            dry_run: attrs.dry_run,
            sub_resource: sub,
            request_sub_resource: sub,
            options: (!options_kind.is_empty()).then_some(Options {
                kind: options_kind,
                api_version: "meta.k8s.io/v1",
            }),
        };
        // `{...head,"object":` + object + `,"oldObject":` + old + `,...tail}`:
        // drop `}` from the head and `{` from the tail.
        let mut head = serde_json::to_string(&head).unwrap_or_default();
        head.pop();
        head.push_str(",\"object\":");
        let mut rest = String::from(",\"oldObject\":");
        let old = serde_json::to_string(old.unwrap_or(&Value::Null)).unwrap_or_default();
        rest.push_str(&old);
        rest.push(',');
        rest.push_str(&serde_json::to_string(&tail).unwrap_or_default()[1..]);
        ReviewText { head, tail: rest }
    }

    /// The request's JSON with `obj` as its object.
    fn with(&self, obj: Option<&Value>) -> String {
        let obj = serde_json::to_string(obj.unwrap_or(&Value::Null)).unwrap_or_default();
        [self.head.as_str(), &obj, &self.tail].concat()
    }
}

/// One plugin call with its failure policy: `Ok(None)` when the plugin failed
/// and its policy is Ignore.
async fn call(p: &AdmissionPlugin, request: &str) -> ApiResult<Option<AdmissionResponse>> {
    match p.review(request).await {
        Ok(resp) => Ok(Some(resp)),
        Err(e) => match p.spec.failure_policy {
            FailurePolicy::Ignore => {
                tracing::warn!(plugin = %p.name, "admission plugin failed, ignored by its failurePolicy: {e}");
                Ok(None)
            }
            FailurePolicy::Fail => Err(failed(p, &e)),
        },
    }
}

/// A plugin that could not answer and whose policy is Fail: the server's
/// fault, not the client's, so 500 InternalError as Kubernetes does for a
/// webhook it failed to call.
fn failed(p: &AdmissionPlugin, e: &PluginError) -> ApiError {
    ApiError::Internal(format!(
        "failed calling admission plugin \"{}\": {e}",
        p.name
    ))
}

/// A denial as the client sees it: Kubernetes' webhook wording, the plugin's code.
fn denied(p: &AdmissionPlugin, resp: &AdmissionResponse) -> ApiError {
    let message = match resp.message.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => format!("admission webhook \"{}\" denied the request: {m}", p.name),
        None => format!(
            "admission webhook \"{}\" denied the request without explanation",
            p.name
        ),
    };
    match resp.code.unwrap_or(403) {
        400 => ApiError::BadRequest(message),
        404 => ApiError::PathNotFound(message),
        429 | 503 => ApiError::Unavailable(message),
        c if c >= 500 => ApiError::Internal(message),
        _ => ApiError::Forbidden(message),
    }
}

/// Canonical text of a quantity, as Kubernetes prints them in messages:
/// binary suffixes for whole multiples of 1024, else decimal or milli units.
pub(crate) fn format_quantity(nanos: i128) -> String {
    const N: i128 = 1_000_000_000;
    if nanos % N == 0 {
        let units = nanos / N;
        for (suffix, scale) in [("Gi", 1i128 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
            if units != 0 && units % scale == 0 {
                return format!("{}{suffix}", units / scale);
            }
        }
        return units.to_string();
    }
    if nanos % 1_000_000 == 0 {
        return format!("{}m", nanos / 1_000_000);
    }
    format!("{}n", nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{artifacts, Limits, PluginKind, PluginRuntime, RuntimeConfig};
    use std::time::Duration;

    fn plugin(file: &str, name: &str, adm: Value, config: &str) -> AdmissionPlugin {
        let runtime = PluginRuntime::new(RuntimeConfig::default()).unwrap();
        let bytes = std::fs::read(file).unwrap();
        let loaded = runtime.load(name, PluginKind::Admission, &bytes).unwrap();
        let loaded = loaded.with_limits(Limits {
            timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let spec = AdmissionSpec::from_plugin_spec(&json!({"kind": "admission", "admission": adm}));
        AdmissionPlugin::for_test(name, spec, Arc::new(loaded), config)
    }

    fn pod_request(image: &str) -> String {
        json!({"kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
               "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": image}]}}})
        .to_string()
    }

    #[tokio::test]
    async fn failure_policies_of_plugins_that_trap_or_hang() {
        for (mode, want) in [("trap", "trapped"), ("loop", "timed out")] {
            let config = format!(r#"{{"mode": "{mode}"}}"#);
            let fail = plugin(
                artifacts::FAULT_ADMISSION_PATH,
                mode,
                json!({"type": "Validating", "rules": []}),
                &config,
            );
            let err = call(&fail, &pod_request("x:1")).await.unwrap_err();
            assert_eq!(err.code(), http::StatusCode::INTERNAL_SERVER_ERROR);
            let msg = err.status()["message"].as_str().unwrap().to_string();
            assert!(
                msg.starts_with(&format!(
                    "Internal error occurred: failed calling admission plugin \"{mode}\""
                )),
                "{msg}"
            );
            assert!(msg.contains(want), "{msg}");
            // The poisoned instance is not kept; the next call gets a fresh one.
            assert_eq!(fail.pooled(), 0);
            let ignore = plugin(
                artifacts::FAULT_ADMISSION_PATH,
                mode,
                json!({"type": "Validating", "rules": [], "failurePolicy": "Ignore"}),
                &config,
            );
            assert!(call(&ignore, &pod_request("x:1")).await.unwrap().is_none());
        }
    }

    // Admission plugins run on the request's own task: one that spins must
    // not hold the worker thread until its timeout. On a single-threaded
    // runtime, a timer task keeps ticking while the plugin loops.
    #[tokio::test]
    async fn a_spinning_plugin_leaves_the_worker_to_other_tasks() {
        let spin = plugin(
            artifacts::FAULT_ADMISSION_PATH,
            "loop",
            json!({"type": "Validating", "rules": []}),
            r#"{"mode": "loop"}"#,
        );
        let started = std::time::Instant::now();
        let ticks = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            started.elapsed()
        };
        let request = pod_request("x:1");
        let (result, ticked) = tokio::join!(call(&spin, &request), ticks);
        let err = result.unwrap_err();
        assert!(err.status()["message"]
            .as_str()
            .unwrap()
            .contains("timed out"));
        let timed_out = started.elapsed();
        assert!(timed_out >= Duration::from_millis(300), "{timed_out:?}");
        assert!(
            ticked < Duration::from_millis(200),
            "the timer task ran only after {ticked:?}, behind a plugin that timed out after {timed_out:?}"
        );
    }

    #[tokio::test]
    async fn denials_carry_the_plugins_message_and_code() {
        let p = plugin(
            artifacts::DENY_LATEST_PATH,
            "deny-latest",
            json!({"type": "Validating", "rules": []}),
            "{}",
        );
        let resp = call(&p, &pod_request("nginx:latest"))
            .await
            .unwrap()
            .unwrap();
        assert!(!resp.allowed);
        let err = denied(&p, &resp);
        assert_eq!(err.code(), http::StatusCode::FORBIDDEN);
        assert_eq!(
            err.status()["message"],
            "admission webhook \"deny-latest\" denied the request: container \"c\" image \"nginx:latest\" uses the :latest tag; pin a version tag or a digest"
        );
        // Allowed, with a warning; the instance goes back to the pool.
        let resp = call(&p, &pod_request("nginx:1.27")).await.unwrap().unwrap();
        assert!(resp.allowed);
        assert_eq!(
            resp.warnings,
            ["container \"c\" image \"nginx:1.27\" is not pinned by digest"]
        );
        assert_eq!(p.pooled(), 1);
        let bad = AdmissionResponse {
            allowed: false,
            code: Some(400),
            message: None,
            patch: None,
            warnings: vec![],
        };
        let err = denied(&p, &bad);
        assert_eq!(err.code(), http::StatusCode::BAD_REQUEST);
        assert!(err.status()["message"]
            .as_str()
            .unwrap()
            .ends_with("denied the request without explanation"));
    }

    #[tokio::test]
    async fn defaults_plugin_patch_applies() {
        let p = plugin(
            artifacts::DEFAULTS_PATH,
            "defaults",
            json!({"type": "Mutating", "rules": []}),
            r#"{"team": "t"}"#,
        );
        let resp = call(&p, &pod_request("x:1")).await.unwrap().unwrap();
        let mut obj: Value =
            serde_json::from_str::<Value>(&pod_request("x:1")).unwrap()["object"].take();
        wasm::apply_patch(&mut obj, resp.patch.as_deref().unwrap()).unwrap();
        assert_eq!(obj["metadata"]["labels"]["team"], "t");
        assert_eq!(
            obj["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "100m", "memory": "64Mi"})
        );
    }

    #[test]
    fn review_text_is_the_admission_review_request() {
        let info = crate::api::resources::RESOURCES
            .iter()
            .find(|r| r.kind == "Pod")
            .unwrap();
        let attrs = Attributes {
            info,
            subresource: "status",
            namespace: "ns",
            name: "",
            operation: Operation::Update,
            dry_run: true,
        };
        let obj = json!({"metadata": {"name": "p"}, "spec": {}});
        let old = json!({"metadata": {"name": "p"}});
        let review = ReviewText::new(&attrs, Some(&obj), Some(&old));
        let patched = json!({"metadata": {"name": "p", "labels": {"a": "b"}}});
        let r: Value = serde_json::from_str(&review.with(Some(&patched))).unwrap();
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "uid",
                "kind",
                "resource",
                "requestKind",
                "requestResource",
                "name",
                "namespace",
                "operation",
                "userInfo",
                "object",
                "oldObject",
                "dryRun",
                "subResource",
                "requestSubResource",
                "options"
            ]
        );
        assert_eq!(
            r["kind"],
            json!({"group": "", "version": "v1", "kind": "Pod"})
        );
        assert_eq!(r["requestResource"]["resource"], "pods");
        assert_eq!(r["name"], "p");
        assert_eq!(r["operation"], "UPDATE");
        assert_eq!(r["userInfo"]["username"], "system:kube-controller-manager");
        assert_eq!(r["object"], patched);
        assert_eq!(r["oldObject"], old);
        assert_eq!(r["dryRun"], true);
        assert_eq!(r["subResource"], "status");
        assert_eq!(r["options"]["kind"], "UpdateOptions");
        // Connect has no options; no object serializes as null.
        let attrs = Attributes {
            subresource: "",
            operation: Operation::Connect,
            ..attrs
        };
        let r: Value =
            serde_json::from_str(&ReviewText::new(&attrs, None, None).with(None)).unwrap();
        assert_eq!(r["object"], Value::Null);
        assert_eq!(r["oldObject"], Value::Null);
        assert!(r.get("options").is_none() && r.get("subResource").is_none());
    }

    #[test]
    fn quantities_print_like_kubernetes() {
        assert_eq!(format_quantity(500_000_000), "500m");
        assert_eq!(format_quantity(2_000_000_000), "2");
        assert_eq!(format_quantity((64i128 << 20) * 1_000_000_000), "64Mi");
        assert_eq!(format_quantity(0), "0");
    }

    #[test]
    fn warnings_become_headers() {
        let mut h = http::HeaderMap::new();
        add_warning_headers(
            &mut h,
            &["image \"x\" is not pinned".into(), "ünïcode".into()],
        );
        let v: Vec<_> = h.get_all(http::header::WARNING).iter().collect();
        assert_eq!(v[0], "299 - \"image \\\"x\\\" is not pinned\"");
        assert_eq!(v[1], "299 - \"?n?code\"");
    }
}
