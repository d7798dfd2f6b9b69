//! Registry credentials from `imagePullSecrets` (`kubernetes.io/dockerconfigjson`
//! or the older `.dockercfg`).

use crate::image::RegistryAuth;
use base64::Engine;
use k8s_openapi::api::core::v1::Secret;

/// The registry credentials a pull secret holds.
pub fn registry_auths(secret: &Secret) -> Vec<RegistryAuth> {
    let data = secret.data.clone().unwrap_or_default();
    let (bytes, nested) = if let Some(b) = data.get(".dockerconfigjson") {
        (b.0.clone(), true)
    } else if let Some(b) = data.get(".dockercfg") {
        (b.0.clone(), false)
    } else {
        return vec![];
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return vec![];
    };
    let auths = if nested { &v["auths"] } else { &v };
    let Some(map) = auths.as_object() else {
        return vec![];
    };
    let mut out = Vec::new();
    for (registry, entry) in map {
        let mut username = entry["username"].as_str().unwrap_or("").to_string();
        let mut password = entry["password"].as_str().unwrap_or("").to_string();
        if let Some(auth) = entry["auth"].as_str() {
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(auth) {
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                if let Some((u, p)) = decoded.split_once(':') {
                    username = u.to_string();
                    password = p.to_string();
                }
            }
        }
        out.push(RegistryAuth {
            registry: registry.clone(),
            username,
            password,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_dockerconfigjson() {
        let cfg = json!({"auths": {"reg.local:5000": {"auth": "dXNlcjpwYXNz"}, "other": {"username": "a", "password": "b"}}});
        let b64 = base64::engine::general_purpose::STANDARD.encode(cfg.to_string());
        let s: Secret = serde_json::from_value(json!({
            "metadata": {"name": "pull"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": b64}
        }))
        .unwrap();
        let mut auths = registry_auths(&s);
        auths.sort_by(|a, b| a.registry.cmp(&b.registry));
        assert_eq!(auths.len(), 2);
        assert_eq!(auths[1].registry, "reg.local:5000");
        assert_eq!(
            (auths[1].username.as_str(), auths[1].password.as_str()),
            ("user", "pass")
        );
        assert_eq!(
            (auths[0].username.as_str(), auths[0].password.as_str()),
            ("a", "b")
        );
    }
}
