//! The ServiceAccount token controller, as much of it as Kubernetes 1.24+
//! still runs: a Secret of type `kubernetes.io/service-account-token` that
//! names a ServiceAccount in the `kubernetes.io/service-account.name`
//! annotation gets `data.token` (a legacy service-account JWT signed by the
//! host), `data.ca.crt` and `data.namespace`. Such a Secret whose
//! ServiceAccount does not exist (or has another uid) is deleted.
//!
//! The signing key is an ECDSA P-256 key (ES256) in `<data-dir>/pki/sa.key`,
//! made at first use and reused after, so tokens survive restarts.

use super::runtime::{Action, ObjectKey, Reconciler, Watch};
use crate::api::client::LocalClient;
use crate::api::error::ApiError;
use crate::api::object;
use crate::api::resources::{self, ResourceInfo};
use crate::pki;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::PublicKeyData;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// The Secret type this controller fills.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming the ServiceAccount.
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// Annotation recording the ServiceAccount's uid.
pub const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// Issuer of legacy service-account tokens.
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

fn secrets() -> &'static ResourceInfo {
    resources::lookup("", "v1", "secrets").expect("secrets are served")
}

fn service_accounts() -> &'static ResourceInfo {
    resources::lookup("", "v1", "serviceaccounts").expect("serviceaccounts are served")
}

/// Errors loading or making the signing key.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Key file I/O or PEM.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Key generation or parsing.
    #[error("signing key: {0}")]
    Key(#[from] rcgen::Error),
    /// Signing or verifying.
    #[error("token: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// The claims of a legacy (Secret-based) service-account token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegacyClaims {
    /// Always [`LEGACY_ISSUER`].
    pub iss: String,
    /// `system:serviceaccount:<namespace>:<name>`.
    pub sub: String,
    /// Namespace of the ServiceAccount.
    #[serde(rename = "kubernetes.io/serviceaccount/namespace")]
    pub namespace: String,
    /// The Secret holding the token.
    #[serde(rename = "kubernetes.io/serviceaccount/secret.name")]
    pub secret_name: String,
    /// The ServiceAccount's name.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.name")]
    pub service_account_name: String,
    /// The ServiceAccount's uid.
    #[serde(rename = "kubernetes.io/serviceaccount/service-account.uid")]
    pub service_account_uid: String,
}

/// Signs (and verifies) service-account tokens with the host's key.
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    ca_pem: String,
}

impl TokenSigner {
    /// Load `<pki_dir>/sa.key`, making it first if absent, and the cluster CA.
    pub fn load_or_create(pki_dir: &Path) -> Result<TokenSigner, TokenError> {
        let path = pki_dir.join("sa.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                pki::write_private(&path, &k.serialize_pem())?;
                k
            }
            Err(source) => return Err(pki::PkiError::Io { path, source }.into()),
        };
        let ca_path = pki_dir.join("ca.crt");
        let ca_pem = std::fs::read_to_string(&ca_path).map_err(|source| pki::PkiError::Io {
            path: ca_path,
            source,
        })?;
        Ok(Self::from_key(&key, ca_pem))
    }

    fn from_key(key: &rcgen::KeyPair, ca_pem: String) -> TokenSigner {
        // Kubernetes' key id: unpadded base64url of the SHA-256 of the DER public key.
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(key.subject_public_key_info()));
        TokenSigner {
            encoding: EncodingKey::from_ec_der(&key.serialize_der()),
            decoding: DecodingKey::from_ec_der(key.public_key_raw()),
            kid,
            ca_pem,
        }
    }

    /// The key id put in token headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The cluster CA certificate (PEM) handed out next to tokens.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Sign legacy token claims.
    pub fn sign(&self, claims: &LegacyClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Sign any claims (bound tokens, see [`crate::auth::ServiceAccountTokens`]).
    pub fn sign_claims<T: Serialize>(&self, claims: &T) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }

    /// Verify a token's signature and the checks in `validation`; return its claims.
    pub fn verify_claims<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Result<T, TokenError> {
        Ok(jsonwebtoken::decode::<T>(token, &self.decoding, validation)?.claims)
    }

    /// Verify a legacy token's signature and issuer and return its claims.
    pub fn verify(&self, token: &str) -> Result<LegacyClaims, TokenError> {
        let mut v = Validation::new(Algorithm::ES256);
        // Legacy tokens carry no expiry or audience.
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_aud = false;
        v.set_issuer(&[LEGACY_ISSUER]);
        Ok(jsonwebtoken::decode::<LegacyClaims>(token, &self.decoding, &v)?.claims)
    }
}

/// The Secret with token, CA and namespace filled in, or None when it
/// already has them.
fn fill(secret: &Value, sa: &Value, signer: &TokenSigner) -> Result<Option<Value>, TokenError> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ns = object::meta_str(secret, "namespace").unwrap_or("");
    let has = |k: &str| secret["data"][k].as_str().is_some_and(|v| !v.is_empty());
    let uid = object::meta_str(sa, "uid").unwrap_or("");
    let uid_ok = secret
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(SA_UID_ANNOTATION))
        == Some(&json!(uid));
    let ca = b64(signer.ca_pem());
    if has("token") && has("namespace") && secret["data"]["ca.crt"] == ca && uid_ok {
        return Ok(None);
    }
    let mut out = secret.clone();
    if !out.get("data").is_some_and(Value::is_object) {
        out["data"] = json!({});
    }
    if !has("token") {
        let sa_name = object::meta_str(sa, "name").unwrap_or("");
        let claims = LegacyClaims {
            iss: LEGACY_ISSUER.into(),
            sub: format!("system:serviceaccount:{ns}:{sa_name}"),
            namespace: ns.into(),
            secret_name: object::meta_str(secret, "name").unwrap_or("").into(),
            service_account_name: sa_name.into(),
            service_account_uid: uid.into(),
        };
        out["data"]["token"] = json!(b64(&signer.sign(&claims)?));
    }
    out["data"]["ca.crt"] = json!(ca);
    out["data"]["namespace"] = json!(b64(ns));
    object::meta_mut(&mut out)
        .entry("annotations")
        .or_insert_with(|| json!({}))[SA_UID_ANNOTATION] = json!(uid);
    Ok(Some(out))
}

fn is_token_secret(o: &Value) -> bool {
    o["type"] == TOKEN_SECRET_TYPE
}

/// The ServiceAccount token controller.
#[derive(Default)]
pub struct TokenController {
    pki_dir: Option<PathBuf>,
    signer: OnceLock<Result<Arc<TokenSigner>, String>>,
}

impl TokenController {
    /// A controller signing with the key under `pki_dir` (`<data-dir>/pki`).
    pub fn new(pki_dir: PathBuf) -> TokenController {
        TokenController {
            pki_dir: Some(pki_dir),
            signer: OnceLock::new(),
        }
    }

    fn signer(&self) -> Result<Arc<TokenSigner>, ApiError> {
        let r = self.signer.get_or_init(|| {
            let dir = self
                .pki_dir
                .as_ref()
                .ok_or_else(|| "no key directory configured".to_string())?;
            TokenSigner::load_or_create(dir)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        r.clone()
            .map_err(|e| ApiError::Internal(format!("service account token signer: {e}")))
    }

    async fn sync_secret(&self, client: &LocalClient, secret: &Value) -> Result<(), ApiError> {
        if !is_token_secret(secret)
            || object::meta_str(secret, "namespace").is_none()
            || super::pods::is_deleting(secret)
        {
            return Ok(());
        }
        let ns = object::meta_str(secret, "namespace");
        let name = object::meta_str(secret, "name").unwrap_or("");
        let annotations = secret.pointer("/metadata/annotations");
        let Some(sa_name) = annotations.and_then(|a| a[SA_NAME_ANNOTATION].as_str()) else {
            return Ok(());
        };
        let sa = client.get(service_accounts(), ns, sa_name)?;
        let want_uid = annotations.and_then(|a| a[SA_UID_ANNOTATION].as_str());
        let stale = match &sa {
            None => true,
            Some(sa) => want_uid.is_some_and(|u| Some(u) != object::meta_str(sa, "uid")),
        };
        if stale {
            // A token for a ServiceAccount that is gone must not stay usable.
            let opts = json!({"preconditions": {"uid": secret.pointer("/metadata/uid")}});
            client.delete(secrets(), ns, name, &opts).await?;
            return Ok(());
        }
        let sa = sa.expect("checked above");
        let signer = self.signer()?;
        let filled = fill(secret, &sa, &signer).map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(updated) = filled {
            client.update(secrets(), updated).await?;
        }
        Ok(())
    }
}

impl Reconciler for TokenController {
    fn name(&self) -> &'static str {
        "serviceaccount-token-controller"
    }

    fn watches(&self) -> Vec<Watch> {
        vec![
            Watch {
                resource: secrets(),
                map: Arc::new(|o| {
                    if is_token_secret(o) {
                        ObjectKey::of(o).into_iter().collect()
                    } else {
                        Vec::new()
                    }
                }),
            },
            // A ServiceAccount change re-checks its namespace's token Secrets;
            // the empty name (no Secret has it) stands for "all of them".
            Watch {
                resource: service_accounts(),
                map: Arc::new(|o| {
                    vec![ObjectKey {
                        namespace: object::meta_str(o, "namespace").map(str::to_string),
                        name: String::new(),
                    }]
                }),
            },
        ]
    }

    async fn reconcile(&self, client: &LocalClient, key: &ObjectKey) -> Result<Action, ApiError> {
        let ns = key.namespace.as_deref();
        if key.name.is_empty() {
            let (all, _) = client.list(secrets(), ns, None)?;
            for s in all.iter().filter(|s| is_token_secret(s)) {
                self.sync_secret(client, s).await?;
            }
            return Ok(Action::AwaitChange);
        }
        if let Some(secret) = client.get(secrets(), ns, &key.name)? {
            self.sync_secret(client, &secret).await?;
        }
        Ok(Action::AwaitChange)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer_in(dir: &Path) -> TokenSigner {
        std::fs::write(
            dir.join("ca.crt"),
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        TokenSigner::load_or_create(dir).unwrap()
    }

    #[test]
    fn key_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = signer_in(dir.path());
        let b = signer_in(dir.path());
        assert_eq!(a.kid(), b.kid());
        let claims = LegacyClaims {
            iss: LEGACY_ISSUER.into(),
            sub: "system:serviceaccount:d:sa".into(),
            namespace: "d".into(),
            secret_name: "s".into(),
            service_account_name: "sa".into(),
            service_account_uid: "u".into(),
        };
        // A token signed before a restart verifies after it.
        let token = a.sign(&claims).unwrap();
        assert_eq!(b.verify(&token).unwrap(), claims);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(a.kid()));
        // Another key does not verify it; nor does a tampered token.
        let other = tempfile::tempdir().unwrap();
        assert!(signer_in(other.path()).verify(&token).is_err());
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"iss":"kubernetes/serviceaccount","sub":"system:serviceaccount:kube-system:admin"}"#);
        parts[1] = &forged;
        assert!(b.verify(&parts.join(".")).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("sa.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key is private");
        }
    }

    #[test]
    fn fills_token_ca_and_namespace_once() {
        let dir = tempfile::tempdir().unwrap();
        let signer = signer_in(dir.path());
        let secret = json!({"metadata": {"name": "tok", "namespace": "d", "annotations": {SA_NAME_ANNOTATION: "build"}}, "type": TOKEN_SECRET_TYPE});
        let sa = json!({"metadata": {"name": "build", "namespace": "d", "uid": "sa-uid"}});
        let filled = fill(&secret, &sa, &signer).unwrap().unwrap();
        let dec = |v: &Value| {
            String::from_utf8(
                base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap())
                    .unwrap(),
            )
            .unwrap()
        };
        assert_eq!(dec(&filled["data"]["namespace"]), "d");
        assert_eq!(dec(&filled["data"]["ca.crt"]), signer.ca_pem());
        assert_eq!(
            filled["metadata"]["annotations"][SA_UID_ANNOTATION],
            "sa-uid"
        );
        let claims = signer.verify(&dec(&filled["data"]["token"])).unwrap();
        assert_eq!(claims.sub, "system:serviceaccount:d:build");
        assert_eq!(claims.secret_name, "tok");
        assert_eq!(claims.service_account_uid, "sa-uid");
        // Already complete: nothing to write.
        assert!(fill(&filled, &sa, &signer).unwrap().is_none());
    }
}
