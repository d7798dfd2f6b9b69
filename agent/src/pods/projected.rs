//! Projected volumes (`serviceAccountToken`, `configMap`, `secret` and
//! `downwardAPI` sources in one directory), the service-account token each
//! pod's `kube-api-access-*` volume carries, and the `KUBERNETES_SERVICE_*`
//! variables in-cluster clients look for.
//!
//! Tokens come from the API's TokenRequest (`serviceaccounts/<sa>/token`),
//! asked for with the node's identity and bound to the pod, so they stop
//! working when the pod is deleted. A token is rewritten once 80% of its
//! lifetime has passed (checked on the worker's periodic resync). Files are
//! replaced by rename, so a reader never sees a half-written token.

use super::cluster::ClusterApi;
use super::env::Sources;
use super::volumes::VolumePaths;
use k8s_openapi::api::core::v1::{KeyToPath, Pod, ProjectedVolumeSource};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// What the agent asks the API for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequestArgs {
    /// Namespace of the pod and ServiceAccount.
    pub namespace: String,
    /// The ServiceAccount.
    pub service_account: String,
    /// Audience (empty: the API's).
    pub audience: String,
    /// Requested lifetime.
    pub expiration_seconds: i64,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its uid.
    pub pod_uid: String,
}

impl TokenRequestArgs {
    /// The TokenRequest body.
    pub fn body(&self) -> serde_json::Value {
        let mut spec = serde_json::json!({
            "expirationSeconds": self.expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.pod_uid},
        });
        if !self.audience.is_empty() {
            spec["audiences"] = serde_json::json!([self.audience]);
        }
        serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    }

    /// The HTTP request (`POST .../serviceaccounts/<sa>/token`).
    pub fn http_request(&self) -> Result<http::Request<Vec<u8>>, String> {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        http::Request::post(format!(
            "/api/v1/namespaces/{}/serviceaccounts/{}/token",
            enc(&self.namespace),
            enc(&self.service_account)
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&self.body()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
    }
}

struct Issued {
    token: String,
    refresh_at: Instant,
}

/// A pod's projected volumes and the tokens in them.
#[derive(Default)]
pub struct Projected {
    /// By (volume, path).
    tokens: HashMap<(String, String), Issued>,
}

fn safe_relative(p: &str) -> bool {
    !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// Write `bytes` to `path` with `mode`, replacing any old file by rename.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("..{name}.tmp"));
    std::fs::write(&tmp, bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Pick entries by `items` (or all of them) as (path, bytes, mode).
fn select(
    entries: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: u32,
    what: &str,
    optional: bool,
) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
    match items {
        Some(items) => {
            let mut out = Vec::new();
            for it in items {
                match entries.get(&it.key) {
                    Some(v) => out.push((
                        it.path.clone(),
                        v.clone(),
                        it.mode.map(|m| m as u32).unwrap_or(default_mode),
                    )),
                    None if optional => {}
                    None => return Err(format!("{what}: key {:?} not found", it.key)),
                }
            }
            Ok(out)
        }
        None => Ok(entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), default_mode))
            .collect()),
    }
}

/// The value of a downward API `fieldRef` this agent knows.
pub fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let map_text = |m: Option<&BTreeMap<String, String>>| {
        m.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}\n", serde_json::Value::String(v.clone())))
            .collect::<String>()
    };
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_text(m.labels.as_ref()),
        "metadata.annotations" => map_text(m.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        p if p.starts_with("metadata.labels['") && p.ends_with("']") => m
            .labels
            .as_ref()
            .and_then(|l| l.get(&p[17..p.len() - 2]).cloned())
            .unwrap_or_default(),
        p if p.starts_with("metadata.annotations['") && p.ends_with("']") => m
            .annotations
            .as_ref()
            .and_then(|l| l.get(&p[22..p.len() - 2]).cloned())
            .unwrap_or_default(),
        other => return Err(format!("downwardAPI: unsupported fieldPath {other:?}")),
    })
}

/// ConfigMaps and Secrets named by projected volume sources.
pub fn referenced_sources(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                cms.push(cm.name.clone());
            }
            if let Some(s) = &src.secret {
                secrets.push(s.name.clone());
            }
        }
    }
    (cms, secrets)
}

impl Projected {
    /// Write every projected volume of the pod under `pod_dir/volumes/projected`,
    /// asking for tokens that are missing or due; returns their paths.
    pub async fn prepare(
        &mut self,
        api: &dyn ClusterApi,
        pod: &Pod,
        pod_dir: &Path,
        sources: &Sources,
    ) -> Result<VolumePaths, String> {
        let mut out = VolumePaths::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(p) = &v.projected else {
                continue;
            };
            let dir = pod_dir.join("volumes/projected").join(&v.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            for (rel, bytes, mode) in self.files(api, pod, &v.name, p, sources).await? {
                if !safe_relative(&rel) {
                    return Err(format!(
                        "projected volume {:?}: invalid path {rel:?}",
                        v.name
                    ));
                }
                write_atomic(&dir.join(&rel), &bytes, mode)?;
            }
            out.insert(v.name.clone(), dir);
        }
        Ok(out)
    }

    async fn files(
        &mut self,
        api: &dyn ClusterApi,
        pod: &Pod,
        volume: &str,
        p: &ProjectedVolumeSource,
        sources: &Sources,
    ) -> Result<Vec<(String, Vec<u8>, u32)>, String> {
        let default_mode = p.default_mode.unwrap_or(0o644) as u32;
        let mut files = Vec::new();
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let token = self.token(api, pod, volume, t).await?;
                files.push((t.path.clone(), token.into_bytes(), default_mode));
            }
            if let Some(cm) = &src.config_map {
                let optional = cm.optional == Some(true);
                match sources.config_map_entries(&cm.name) {
                    Some(e) => files.extend(select(
                        &e,
                        cm.items.as_ref(),
                        default_mode,
                        &format!("configmap {:?}", cm.name),
                        optional,
                    )?),
                    None if optional => {}
                    None => return Err(format!("configmap {:?} not found", cm.name)),
                }
            }
            if let Some(s) = &src.secret {
                let optional = s.optional == Some(true);
                match sources.secret_entries(&s.name) {
                    Some(e) => files.extend(select(
                        &e,
                        s.items.as_ref(),
                        default_mode,
                        &format!("secret {:?}", s.name),
                        optional,
                    )?),
                    None if optional => {}
                    None => return Err(format!("secret {:?} not found", s.name)),
                }
            }
            if let Some(d) = &src.downward_api {
                for it in d.items.iter().flatten() {
                    let mode = it.mode.map(|m| m as u32).unwrap_or(default_mode);
                    if let Some(f) = &it.field_ref {
                        files.push((
                            it.path.clone(),
                            field_value(pod, &f.field_path)?.into_bytes(),
                            mode,
                        ));
                    } else if it.resource_field_ref.is_some() {
                        return Err(format!(
                            "downwardAPI {:?}: resourceFieldRef is not supported",
                            it.path
                        ));
                    }
                }
            }
        }
        Ok(files)
    }

    async fn token(
        &mut self,
        api: &dyn ClusterApi,
        pod: &Pod,
        volume: &str,
        t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    ) -> Result<String, String> {
        let key = (volume.to_string(), t.path.clone());
        if let Some(i) = self.tokens.get(&key) {
            if Instant::now() < i.refresh_at {
                return Ok(i.token.clone());
            }
        }
        let args = TokenRequestArgs {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            service_account: pod
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            audience: t.audience.clone().unwrap_or_default(),
            expiration_seconds: t.expiration_seconds.unwrap_or(3600),
            pod_name: pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        };
        let resp = api.token_request(&args).await.map_err(|e| {
            format!(
                "failed to fetch token for serviceaccount {:?}: {}",
                args.service_account, e.0
            )
        })?;
        let token = resp
            .pointer("/status/token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("the TokenRequest response has no token")?
            .to_string();
        let lifetime = resp
            .pointer("/spec/expirationSeconds")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(args.expiration_seconds)
            .max(1) as u64;
        // Refresh after 80% of the lifetime (and at least daily), as kubelet does.
        let refresh = Duration::from_secs(lifetime * 8 / 10).min(Duration::from_secs(86_400));
        self.tokens.insert(
            key,
            Issued {
                token: token.clone(),
                refresh_at: Instant::now() + refresh,
            },
        );
        Ok(token)
    }

    /// Rewrite volumes whose tokens are due (called on the worker's resync).
    /// Failures are logged; the old token stays until the next try.
    pub async fn refresh(&mut self, api: &dyn ClusterApi, pod: &Pod, pod_dir: &Path) {
        let now = Instant::now();
        if !self.tokens.values().any(|i| i.refresh_at <= now) {
            return;
        }
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            let Some(p) = &v.projected else {
                continue;
            };
            let dir = pod_dir.join("volumes/projected").join(&v.name);
            for t in p
                .sources
                .iter()
                .flatten()
                .filter_map(|s| s.service_account_token.as_ref())
            {
                let due = self
                    .tokens
                    .get(&(v.name.clone(), t.path.clone()))
                    .is_some_and(|i| i.refresh_at <= now);
                if !due || !safe_relative(&t.path) {
                    continue;
                }
                let mode = p.default_mode.unwrap_or(0o644) as u32;
                match self.token(api, pod, &v.name, t).await {
                    Ok(token) => {
                        if let Err(e) = write_atomic(&dir.join(&t.path), token.as_bytes(), mode) {
                            tracing::warn!(volume = %v.name, error = %e, "writing refreshed token");
                        }
                    }
                    Err(e) => tracing::warn!(volume = %v.name, error = %e, "refreshing token"),
                }
            }
        }
    }

    /// Time the earliest token is due (for tests and diagnostics).
    pub fn next_refresh(&self) -> Option<Instant> {
        self.tokens.values().map(|i| i.refresh_at).min()
    }
}

/// The `KUBERNETES_SERVICE_*` / `KUBERNETES_PORT*` variables for the
/// `default/kubernetes` Service (none when it does not exist or has no
/// ClusterIP), as kubelet sets them in every container.
pub async fn kubernetes_service_env(api: &dyn ClusterApi) -> Vec<(String, String)> {
    let Ok(Some(svc)) = api.service("default", "kubernetes").await else {
        return Vec::new();
    };
    let Some(spec) = svc.spec else {
        return Vec::new();
    };
    let ip = spec.cluster_ip.unwrap_or_default();
    if ip.is_empty() || ip == "None" {
        return Vec::new();
    }
    let ports = spec.ports.unwrap_or_default();
    let Some(port) = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("https"))
        .or(ports.first())
    else {
        return Vec::new();
    };
    let n = port.port;
    let proto = port.protocol.clone().unwrap_or_else(|| "TCP".into());
    let lower = proto.to_ascii_lowercase();
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    let mut env = vec![
        ("KUBERNETES_SERVICE_HOST".to_string(), ip.clone()),
        ("KUBERNETES_SERVICE_PORT".to_string(), n.to_string()),
    ];
    if let Some(name) = port.name.as_deref().filter(|s| !s.is_empty()) {
        env.push((
            format!(
                "KUBERNETES_SERVICE_PORT_{}",
                name.to_ascii_uppercase().replace('-', "_")
            ),
            n.to_string(),
        ));
    }
    let prefix = format!("KUBERNETES_PORT_{n}_{proto}");
    env.extend([
        (
            "KUBERNETES_PORT".to_string(),
            format!("{lower}://{host}:{n}"),
        ),
        (prefix.clone(), format!("{lower}://{host}:{n}")),
        (format!("{prefix}_PROTO"), lower.clone()),
        (format!("{prefix}_PORT"), n.to_string()),
        (format!("{prefix}_ADDR"), ip),
    ]);
    env
}

/// Put service variables under the container's own: names the pod sets win.
pub fn merge_service_env(
    service: Vec<(String, String)>,
    own: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = service
        .into_iter()
        .filter(|(k, _)| !own.iter().any(|(o, _)| o == k))
        .collect();
    out.extend(own);
    out
}

/// Where a pod's projected volume lives (for tests).
pub fn volume_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir.join("volumes/projected").join(volume)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use futures::FutureExt;
    use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
    use serde_json::json;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        asked: Mutex<Vec<TokenRequestArgs>>,
    }

    impl ClusterApi for Fake {
        fn config_map<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<ConfigMap>, super::super::cluster::ApiError>> {
            async { Ok(None) }.boxed()
        }
        fn secret<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<Secret>, super::super::cluster::ApiError>> {
            async { Ok(None) }.boxed()
        }
        fn patch_status<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: serde_json::Value,
        ) -> BoxFuture<'a, Result<(), super::super::cluster::ApiError>> {
            async { Ok(()) }.boxed()
        }
        fn delete_pod<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: &'a str,
        ) -> BoxFuture<'a, Result<(), super::super::cluster::ApiError>> {
            async { Ok(()) }.boxed()
        }
        fn token_request<'a>(
            &'a self,
            r: &'a TokenRequestArgs,
        ) -> BoxFuture<'a, Result<serde_json::Value, super::super::cluster::ApiError>> {
            let mut asked = self.asked.lock().unwrap();
            asked.push(r.clone());
            let n = asked.len();
            async move {
                Ok(json!({"spec": {"expirationSeconds": r.expiration_seconds}, "status": {"token": format!("tok-{n}")}}))
            }
            .boxed()
        }
        fn service<'a>(
            &'a self,
            ns: &'a str,
            name: &'a str,
        ) -> BoxFuture<'a, Result<Option<Service>, super::super::cluster::ApiError>> {
            async move {
                assert_eq!((ns, name), ("default", "kubernetes"));
                Ok(Some(
                    serde_json::from_value(json!({"spec": {"clusterIP": "10.43.0.1",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP"}]}}))
                    .unwrap(),
                ))
            }
            .boxed()
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "d", "uid": "pod-uid", "labels": {"app": "x"}},
            "spec": {"serviceAccountName": "build", "containers": [{"name": "c"}], "volumes": [
                {"name": "kube-api-access-abcde", "projected": {"defaultMode": 0o640, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"secret": {"name": "s", "items": [{"key": "k", "path": "sub/k", "mode": 0o600}]}},
                    {"downwardAPI": {"items": [
                        {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}},
                        {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}}]}}]}}]}
        }))
        .unwrap()
    }

    fn sources() -> Sources {
        let mut s = Sources::default();
        s.config_maps.insert(
            "kube-root-ca.crt".into(),
            Some(serde_json::from_value(json!({"data": {"ca.crt": "PEM"}})).unwrap()),
        );
        s.secrets.insert(
            "s".into(),
            Some(serde_json::from_value(json!({"data": {"k": "c2VjcmV0"}})).unwrap()),
        );
        s
    }

    #[tokio::test]
    async fn writes_sources_with_modes_and_reuses_then_refreshes_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let api = Fake::default();
        let mut p = Projected::default();
        let vols = p
            .prepare(&api, &pod(), dir.path(), &sources())
            .await
            .unwrap();
        let v = &vols["kube-api-access-abcde"];
        let read = |f: &str| std::fs::read_to_string(v.join(f)).unwrap();
        let mode = |f: &str| std::fs::metadata(v.join(f)).unwrap().mode() & 0o7777;
        assert_eq!(read("token"), "tok-1");
        assert_eq!(read("ca.crt"), "PEM");
        assert_eq!(read("sub/k"), "secret");
        assert_eq!(read("namespace"), "d");
        assert_eq!(read("app"), "x");
        assert_eq!(mode("token"), 0o640);
        assert_eq!(mode("sub/k"), 0o600);
        let args = api.asked.lock().unwrap()[0].clone();
        assert_eq!(args.service_account, "build");
        assert_eq!(args.pod_uid, "pod-uid");
        assert_eq!(args.expiration_seconds, 3607);
        assert_eq!(
            args.body()["spec"]["boundObjectRef"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "web", "uid": "pod-uid"})
        );
        // A second container start reuses the token.
        p.prepare(&api, &pod(), dir.path(), &sources())
            .await
            .unwrap();
        assert_eq!(api.asked.lock().unwrap().len(), 1);
        let due = p.next_refresh().unwrap() - Instant::now();
        assert!(due > Duration::from_secs(2800) && due <= Duration::from_secs(2886));
        // Not due: nothing happens; due: a new token replaces the file.
        p.refresh(&api, &pod(), dir.path()).await;
        assert_eq!(read("token"), "tok-1");
        for i in p.tokens.values_mut() {
            i.refresh_at = Instant::now();
        }
        p.refresh(&api, &pod(), dir.path()).await;
        assert_eq!(read("token"), "tok-2");
        assert_eq!(mode("token"), 0o640);
    }

    #[tokio::test]
    async fn missing_sources_fail_unless_optional() {
        let dir = tempfile::tempdir().unwrap();
        let api = Fake::default();
        let e = Projected::default()
            .prepare(&api, &pod(), dir.path(), &Sources::default())
            .await
            .unwrap_err();
        assert!(e.contains("kube-root-ca.crt"), "{e}");
    }

    #[tokio::test]
    async fn service_env_from_the_kubernetes_service() {
        let env = kubernetes_service_env(&Fake::default()).await;
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some("10.43.0.1"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT"), Some("443"));
        assert_eq!(get("KUBERNETES_SERVICE_PORT_HTTPS"), Some("443"));
        assert_eq!(get("KUBERNETES_PORT"), Some("tcp://10.43.0.1:443"));
        assert_eq!(get("KUBERNETES_PORT_443_TCP_ADDR"), Some("10.43.0.1"));
        let merged =
            merge_service_env(env, vec![("KUBERNETES_SERVICE_HOST".into(), "mine".into())]);
        assert_eq!(
            merged
                .iter()
                .filter(|(k, _)| k == "KUBERNETES_SERVICE_HOST")
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>(),
            ["mine"]
        );
    }
}
