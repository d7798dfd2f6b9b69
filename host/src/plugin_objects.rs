//! Plugin objects (`plugins.shoal.dev/v1alpha1 Plugin`): the built-in ones
//! are created at start; a controller loads each object's module from the blob
//! store, reports `status.state` (Ready / Failed with the reason), and
//! publishes the live set that the scheduler (and later admission, authorizer
//! and router chains) swap in atomically.

use crate::api::error::ApiError;
use crate::api::{object, resources, AppState};
use crate::blobs::{self, BlobStore};
use crate::plugin::{artifacts, LoadedPlugin, PluginKind, PluginRuntime};
use crate::store::{Op, Precondition, StoreError};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Name of the built-in scheduler policy; its filters apply to every profile.
pub const DEFAULT_POLICY: &str = "default";
/// The profile pods get when they name no scheduler.
pub const DEFAULT_PROFILE: &str = "default-scheduler";

/// One loaded, Ready plugin and the parts of its spec the consumers need.
#[derive(Clone)]
pub struct PluginEntry {
    /// Object name.
    pub name: String,
    /// World.
    pub kind: PluginKind,
    /// Module digest.
    pub digest: String,
    /// `spec.config` as JSON text ("{}" when unset).
    pub config: String,
    /// Scheduler profiles this policy scores for.
    pub profiles: Vec<String>,
    /// Weight of this policy's scores.
    pub weight: u32,
    /// `metadata.generation`: a change means "re-instantiate".
    pub generation: i64,
    /// The compiled, pre-instantiated module.
    pub loaded: Arc<LoadedPlugin>,
    /// Admission plugins: `spec.admission` and `spec.order` (host/src/admission).
    pub admission: Option<crate::admission::AdmissionSpec>,
}

/// The Ready plugins, by name. Replaced as a whole on every change.
pub type PluginSet = BTreeMap<String, PluginEntry>;

fn kind_of(s: &str) -> Option<PluginKind> {
    match s {
        "scheduler" => Some(PluginKind::Scheduler),
        "admission" => Some(PluginKind::Admission),
        "authorizer" => Some(PluginKind::Authorizer),
        "router" => Some(PluginKind::Router),
        _ => None,
    }
}

fn info() -> &'static resources::ResourceInfo {
    resources::lookup("plugins.shoal.dev", "v1alpha1", "plugins").expect("plugins are served")
}

/// Store the embedded default modules and create their Plugin objects if
/// missing (or refresh a built-in one whose embedded module changed).
pub async fn bootstrap(state: &AppState, blobs: &BlobStore) -> Result<(), ApiError> {
    let bin = blobs::digest_of(artifacts::BINPACK);
    blobs
        .put(&bin, artifacts::BINPACK)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    ensure_builtin(
        state,
        blobs,
        DEFAULT_POLICY,
        artifacts::DEFAULT_SCHEDULER,
        json!({"kind": "scheduler", "profiles": [DEFAULT_PROFILE], "config": {}}),
    )
    .await?;
    ensure_builtin(
        state,
        blobs,
        DEFAULT_ROUTER,
        artifacts::ROUTER_DEFAULT,
        json!({"kind": "router", "config": {}}),
    )
    .await?;
    // Kubernetes RBAC, the built-in authorizer (host/src/authz, plugins/rbac).
    ensure_builtin(
        state,
        blobs,
        RBAC_PLUGIN,
        artifacts::RBAC,
        json!({"kind": "authorizer", "config": {}}),
    )
    .await?;
    Ok(())
}

/// Name of the built-in RBAC authorizer Plugin.
pub const RBAC_PLUGIN: &str = "rbac";

/// Name of the built-in router Plugin (used by Services naming no router).
pub const DEFAULT_ROUTER: &str = "default-router";

/// Store a built-in module and create its Plugin object (`spec` plus the
/// module's digest) if missing, or point an existing built-in one (annotated
/// `plugins.shoal.dev/builtin: "true"`) at a changed embedded module. A
/// Plugin of that name made by a user is left alone.
pub async fn ensure_builtin(
    state: &AppState,
    blobs: &BlobStore,
    name: &str,
    module: &[u8],
    spec: Value,
) -> Result<(), ApiError> {
    let digest = blobs::digest_of(module);
    blobs
        .put(&digest, module)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = info().key(None, name);
    let existing = state.store.get(&key)?;
    let builtin_stale = match &existing {
        None => true,
        Some(kv) => {
            let v = object::from_store(kv)?;
            let builtin = v
                .pointer("/metadata/annotations/plugins.shoal.dev~1builtin")
                .and_then(Value::as_str)
                == Some("true");
            builtin && v.pointer("/spec/digest").and_then(Value::as_str) != Some(digest.as_str())
        }
    };
    if !builtin_stale {
        return Ok(());
    }
    let mut spec = spec;
    spec["digest"] = json!(digest);
    let mut obj = json!({
        "apiVersion": "plugins.shoal.dev/v1alpha1", "kind": "Plugin",
        "metadata": {"name": name, "annotations": {"plugins.shoal.dev/builtin": "true"}},
        "spec": spec,
    });
    let precondition = match &existing {
        None => {
            obj = crate::api::handlers::prepare_create(info(), None, obj, false)?;
            Precondition::Absent
        }
        Some(kv) => {
            let mut cur = object::from_store(kv)?;
            cur["spec"]["digest"] = json!(digest);
            let g = cur
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            cur["metadata"]["generation"] = json!(g + 1);
            obj = cur;
            Precondition::ModRevision(kv.mod_revision)
        }
    };
    match state
        .store
        .txn(vec![Op::Put {
            key,
            value: object::to_store(&mut obj),
            precondition,
        }])
        .await
    {
        Ok(_) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Write `status` of a Plugin (state, reason, digest, observedGeneration),
/// retrying on conflict; a no-op when nothing changes.
pub async fn set_status(
    state: &AppState,
    name: &str,
    st: &str,
    reason: &str,
    generation: Option<i64>,
) -> Result<(), ApiError> {
    let key = info().key(None, name);
    for _ in 0..8 {
        let Some(kv) = state.store.get(&key)? else {
            return Ok(());
        };
        let mut obj = object::from_store(&kv)?;
        let mut status = json!({"state": st, "reason": reason});
        if let Some(d) = obj.pointer("/spec/digest").cloned() {
            status["digest"] = d;
        }
        let g = generation.or_else(|| obj.pointer("/metadata/generation").and_then(Value::as_i64));
        if let Some(g) = g {
            status["observedGeneration"] = json!(g);
        }
        if obj.get("status") == Some(&status) {
            return Ok(());
        }
        obj["status"] = status;
        match state
            .store
            .txn(vec![Op::Put {
                key: key.clone(),
                value: object::to_store(&mut obj),
                precondition: Precondition::ModRevision(kv.mod_revision),
            }])
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Build the check the API server runs when a Plugin's module or kind changes.
pub fn module_check(runtime: Arc<PluginRuntime>, blobs: BlobStore) -> crate::api::PluginCheck {
    Arc::new(move |name: &str, kind: &str, digest: &str| {
        let k = kind_of(kind).ok_or_else(|| format!("unknown plugin kind {kind:?}"))?;
        let bytes = blobs
            .get(digest)
            .map_err(|e| format!("{e}; upload it first (shoal plugin install does)"))?;
        runtime
            .load(name, k, &bytes)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// Runs the controller: keeps the published set equal to the Ready plugins.
pub struct PluginController {
    state: Arc<AppState>,
    runtime: Arc<PluginRuntime>,
    blobs: BlobStore,
    tx: watch::Sender<Arc<PluginSet>>,
}

impl PluginController {
    /// A controller and the receiver consumers watch for new sets.
    pub fn new(
        state: Arc<AppState>,
        runtime: Arc<PluginRuntime>,
        blobs: BlobStore,
    ) -> (PluginController, watch::Receiver<Arc<PluginSet>>) {
        let (tx, rx) = watch::channel(Arc::new(PluginSet::new()));
        (
            PluginController {
                state,
                runtime,
                blobs,
                tx,
            },
            rx,
        )
    }

    /// Reconcile once now, then on every Plugin change.
    pub async fn run(self) {
        let prefix = info().prefix(None);
        loop {
            let from = self.state.store.current_revision();
            let mut events = match self.state.store.watch(&prefix, from) {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "plugin controller: watch failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.reconcile().await;
            while let Some(ev) = events.next().await {
                if ev.is_err() {
                    break;
                }
                self.reconcile().await;
            }
        }
    }

    /// Level-based: load every Plugin object (reusing already-loaded modules
    /// with the same digest) and publish the Ready ones.
    async fn reconcile(&self) {
        let list = match self.state.store.list(&info().prefix(None), None, 0, None) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "plugin controller: list failed");
                return;
            }
        };
        let current = self.tx.borrow().clone();
        let mut next = PluginSet::new();
        let mut statuses = Vec::new();
        for kv in &list.items {
            let Ok(obj) = object::from_store(kv) else {
                continue;
            };
            let name = object::meta_str(&obj, "name").unwrap_or("").to_string();
            let generation = obj
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if obj.pointer("/metadata/deletionTimestamp").is_some() {
                continue;
            }
            let spec = obj.get("spec").cloned().unwrap_or(json!({}));
            let kind = spec.get("kind").and_then(Value::as_str).and_then(kind_of);
            let digest = spec
                .get("digest")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let Some(kind) = kind else { continue };
            // A plugin that failed at call time stays Failed until its object changes.
            let failed_now = obj.pointer("/status/state").and_then(Value::as_str) == Some("Failed")
                && obj
                    .pointer("/status/observedGeneration")
                    .and_then(Value::as_i64)
                    == Some(generation);
            if failed_now {
                continue;
            }
            let timeout = spec
                .get("timeoutSeconds")
                .and_then(Value::as_f64)
                .map(Duration::from_secs_f64);
            // Admission plugins: spec.admission.timeoutSeconds, default 10s.
            let timeout = match kind {
                PluginKind::Admission => Some(Duration::from_secs_f64(
                    crate::admission::spec::timeout_seconds(&spec),
                )),
                _ => timeout,
            };
            let loaded = match current.get(&name) {
                Some(e)
                    if e.digest == digest
                        && e.kind == kind
                        && e.loaded.limits().timeout
                            == timeout.unwrap_or(e.loaded.limits().timeout) =>
                {
                    Ok(e.loaded.clone())
                }
                _ => self.load(&name, kind, &digest, timeout).await,
            };
            match loaded {
                Ok(loaded) => {
                    let mut profiles: Vec<String> = spec
                        .get("profiles")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_else(|| vec![name.clone()]);
                    profiles.dedup();
                    let weight = spec.get("weight").and_then(Value::as_u64).unwrap_or(1) as u32;
                    let config = spec
                        .get("config")
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "{}".into());
                    next.insert(
                        name.clone(),
                        PluginEntry {
                            name: name.clone(),
                            kind,
                            digest,
                            config,
                            profiles,
                            weight,
                            generation,
                            loaded,
                            admission: (kind == PluginKind::Admission)
                                .then(|| crate::admission::AdmissionSpec::from_plugin_spec(&spec)),
                        },
                    );
                    statuses.push((name.clone(), "Ready", String::new(), generation));
                }
                Err(reason) => {
                    tracing::warn!(plugin = %name, %reason, "plugin failed to load");
                    statuses.push((name.clone(), "Failed", reason, generation));
                }
            }
        }
        let changed = next.len() != current.len()
            || next.iter().any(|(k, v)| {
                current
                    .get(k)
                    .is_none_or(|c| c.generation != v.generation || c.digest != v.digest)
            });
        if changed {
            tracing::info!(plugins = ?next.keys().collect::<Vec<_>>(), "plugin set updated");
            let _ = self.tx.send(Arc::new(next));
        }
        // Status is written after publishing, so a client that sees Ready knows
        // the new set is already handed to the consumers.
        for (name, st, reason, generation) in statuses {
            let _ = set_status(&self.state, &name, st, &reason, Some(generation)).await;
        }
    }

    async fn load(
        &self,
        name: &str,
        kind: PluginKind,
        digest: &str,
        timeout: Option<Duration>,
    ) -> Result<Arc<LoadedPlugin>, String> {
        let (runtime, blobs, name, digest) = (
            self.runtime.clone(),
            self.blobs.clone(),
            name.to_string(),
            digest.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let bytes = blobs.get(&digest).map_err(|e| e.to_string())?;
            let loaded = runtime
                .load(&name, kind, &bytes)
                .map_err(|e| e.to_string())?;
            // spec.timeoutSeconds bounds each call of this plugin.
            let loaded = match timeout {
                Some(t) => {
                    let limits = crate::plugin::Limits {
                        timeout: t,
                        ..loaded.limits().clone()
                    };
                    loaded.with_limits(limits)
                }
                None => loaded,
            };
            Ok(Arc::new(loaded))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
