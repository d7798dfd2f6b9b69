//! The built-in ServiceAccount admission step for pod creation, as
//! Kubernetes' `ServiceAccount` admission plugin: default the pod's
//! ServiceAccount to `default`, refuse pods whose ServiceAccount does not
//! exist, and (unless `automountServiceAccountToken: false` on the pod or the
//! ServiceAccount) add the `kube-api-access-<random>` projected volume (a
//! bound token, the cluster CA, the namespace) mounted read-only at
//! [`MOUNT_PATH`] in every container.

use super::error::{ApiError, ApiResult};
use super::object;
use super::AppState;
use rand::Rng;
use serde_json::{json, Value};

/// Where containers find the token, `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap holding the cluster CA in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// Prefix of the projected volume's name.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// Lifetime the projected token asks for (Kubernetes' 3607 seconds).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;

/// Kubernetes' random-suffix alphabet (no vowels, no confusable digits).
const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn suffix() -> String {
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The projected volume with the pod's API credentials.
pub fn api_access_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "defaultMode": 420,
            "sources": [
                {"serviceAccountToken": {"expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"}},
                {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ],
        },
    })
}

/// Admit a new pod (already defaulted and validated): default and check its
/// ServiceAccount and add the token volume. Called from the pod create path.
pub fn admit_pod(state: &AppState, pod: &mut Value) -> ApiResult<()> {
    if pod
        .pointer("/metadata/annotations/kubernetes.io~1config.mirror")
        .is_some()
    {
        return Ok(());
    }
    let ns = object::meta_str(pod, "namespace").unwrap_or("").to_string();
    let pod_name = object::meta_str(pod, "name").unwrap_or("").to_string();
    let Some(spec) = pod.get_mut("spec").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let named = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let sa_name = named("serviceAccountName")
        .or_else(|| named("serviceAccount"))
        .unwrap_or_else(|| "default".into());
    spec.insert("serviceAccountName".into(), json!(sa_name));
    spec.insert("serviceAccount".into(), json!(sa_name));
    let key = format!("/core/serviceaccounts/{ns}/{sa_name}");
    let sa: Value = match state.store.get(&key)? {
        Some(kv) => serde_json::from_slice(&kv.value).unwrap_or(Value::Null),
        None => {
            return Err(ApiError::Forbidden(format!(
                "pods \"{pod_name}\" is forbidden: error looking up service account {ns}/{sa_name}: serviceaccount \"{sa_name}\" not found"
            )))
        }
    };
    let automount = spec
        .get("automountServiceAccountToken")
        .and_then(Value::as_bool)
        .or_else(|| {
            sa.get("automountServiceAccountToken")
                .and_then(Value::as_bool)
        })
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let has_mount = |c: &Value| {
        c.get("volumeMounts")
            .and_then(Value::as_array)
            .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == MOUNT_PATH))
    };
    let needs: bool = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .any(|c| !has_mount(c));
    if !needs {
        return Ok(());
    }
    let volumes = spec
        .entry("volumes")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| ApiError::BadRequest("spec.volumes must be a list".into()))?;
    let taken = |n: &str, vs: &[Value]| vs.iter().any(|v| v["name"] == n);
    let mut vol_name = format!("{VOLUME_PREFIX}{}", suffix());
    while taken(&vol_name, volumes) {
        vol_name = format!("{VOLUME_PREFIX}{}", suffix());
    }
    volumes.push(api_access_volume(&vol_name));
    for k in ["initContainers", "containers", "ephemeralContainers"] {
        for c in spec
            .get_mut(k)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if has_mount(c) {
                continue;
            }
            let Some(obj) = c.as_object_mut() else {
                continue;
            };
            if let Some(ms) = obj
                .entry("volumeMounts")
                .or_insert_with(|| json!([]))
                .as_array_mut()
            {
                ms.push(json!({"name": vol_name, "readOnly": true, "mountPath": MOUNT_PATH}));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
    use crate::store::{Op, Precondition, Store};
    use std::sync::Arc;

    async fn state(dir: &std::path::Path) -> AppState {
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&dir.join("db.redb"), EmbeddedOptions::default(), None).unwrap(),
        );
        for (name, extra) in [
            ("default", json!({})),
            ("quiet", json!({"automountServiceAccountToken": false})),
        ] {
            let mut sa = json!({"metadata": {"name": name, "namespace": "d", "uid": "u"}});
            if let (Some(o), Some(e)) = (sa.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            store
                .txn(vec![Op::Put {
                    key: format!("/core/serviceaccounts/d/{name}"),
                    value: serde_json::to_vec(&sa).unwrap().into(),
                    precondition: Precondition::None,
                }])
                .await
                .unwrap();
        }
        AppState {
            store,
            metrics: Arc::new(Metrics::new()),
            config: Default::default(),
            hooks: Default::default(),
        }
    }

    #[tokio::test]
    async fn defaults_mounts_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(dir.path()).await;
        let mut pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "initContainers": [{"name": "i", "image": "x"}],
            "containers": [{"name": "a", "image": "x"},
                {"name": "b", "image": "x", "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]}],
            "volumes": [{"name": "own", "emptyDir": {}}]}});
        admit_pod(&st, &mut pod).unwrap();
        assert_eq!(pod["spec"]["serviceAccountName"], "default");
        assert_eq!(pod["spec"]["serviceAccount"], "default");
        let vols = pod["spec"]["volumes"].as_array().unwrap();
        assert_eq!(vols.len(), 2);
        let name = vols[1]["name"].as_str().unwrap();
        assert!(name.starts_with(VOLUME_PREFIX) && name.len() == VOLUME_PREFIX.len() + 5);
        let srcs = &vols[1]["projected"]["sources"];
        assert_eq!(srcs[0]["serviceAccountToken"]["expirationSeconds"], 3607);
        assert_eq!(srcs[1]["configMap"]["name"], ROOT_CA_CONFIGMAP);
        assert_eq!(
            srcs[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        let want = json!([{"name": name, "readOnly": true, "mountPath": MOUNT_PATH}]);
        assert_eq!(pod["spec"]["initContainers"][0]["volumeMounts"], want);
        assert_eq!(pod["spec"]["containers"][0]["volumeMounts"], want);
        // A container with its own mount there keeps it.
        assert_eq!(
            pod["spec"]["containers"][1]["volumeMounts"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        // Opted out on the pod, or on the ServiceAccount.
        let mut pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "automountServiceAccountToken": false, "containers": [{"name": "a"}]}});
        admit_pod(&st, &mut pod).unwrap();
        assert!(pod["spec"].get("volumes").is_none());
        let mut pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "serviceAccount": "quiet", "containers": [{"name": "a"}]}});
        admit_pod(&st, &mut pod).unwrap();
        assert_eq!(pod["spec"]["serviceAccountName"], "quiet");
        assert!(pod["spec"].get("volumes").is_none());
        // The pod's own setting wins over the ServiceAccount's.
        let mut pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "serviceAccountName": "quiet", "automountServiceAccountToken": true, "containers": [{"name": "a"}]}});
        admit_pod(&st, &mut pod).unwrap();
        assert_eq!(pod["spec"]["volumes"].as_array().unwrap().len(), 1);

        // A missing ServiceAccount is refused.
        let mut pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {
            "serviceAccountName": "ghost", "containers": [{"name": "a"}]}});
        let e = admit_pod(&st, &mut pod).unwrap_err();
        let status = e.status();
        assert_eq!(status["code"], 403);
        assert!(status["message"]
            .as_str()
            .unwrap()
            .contains("error looking up service account d/ghost"));
    }
}
