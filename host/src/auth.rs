//! Authentication: who a request comes from.
//!
//! In the order kube-apiserver's union authenticator tries them: a verified
//! client certificate (CN → user, O → groups), then a bearer token from the
//! static token file (`--token-auth-file`), then a ServiceAccount JWT signed
//! by the host (bound tokens from TokenRequest, and legacy Secret tokens).
//! Every authenticated identity is in `system:authenticated`; requests with
//! none get 401 (health endpoints stay open).

use crate::api::resources;
use crate::controllers::serviceaccount::{LegacyClaims, TokenSigner, LEGACY_ISSUER};
use crate::store::Store;
use base64::Engine;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The group every authenticated identity is in.
pub const AUTHENTICATED: &str = "system:authenticated";
/// The default issuer (and API audience) of service-account tokens.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Shortest TokenRequest lifetime, in seconds.
pub const MIN_EXPIRATION_SECONDS: i64 = 600;
/// Default TokenRequest lifetime, in seconds.
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;
/// How long a validated token is trusted without looking again.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
const CACHE_MAX: usize = 4096;

/// Bearer-token settings (`--token-auth-file`, `--service-account-issuer`).
#[derive(Debug, Clone)]
pub struct AuthnConfig {
    /// Static token file (CSV `token,user,uid,"group1,group2"`).
    pub token_auth_file: Option<std::path::PathBuf>,
    /// Issuer of service-account tokens; also the API audience.
    pub service_account_issuer: String,
}

impl Default for AuthnConfig {
    fn default() -> Self {
        AuthnConfig {
            token_auth_file: None,
            service_account_issuer: DEFAULT_ISSUER.into(),
        }
    }
}

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// User name (client certificate CN, token file user, or
    /// `system:serviceaccount:<ns>:<name>`).
    pub user: String,
    /// Groups, including `system:authenticated`.
    pub groups: Vec<String>,
    /// The user's uid (a ServiceAccount's uid; the token file's uid column).
    pub uid: String,
    /// Extra attributes (for ServiceAccount tokens bound to a pod:
    /// `authentication.kubernetes.io/pod-name`, `.../pod-uid`, `.../credential-id`).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl Identity {
    /// Read the identity from a verified client certificate.
    pub fn from_cert(cert: &CertificateDer<'_>) -> Option<Identity> {
        let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
        let user = x
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_string();
        let groups: Vec<String> = x
            .subject()
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_string))
            .collect();
        Some(
            Identity {
                user,
                groups,
                ..Default::default()
            }
            .authenticated(),
        )
    }

    /// Whether the user is in `system:masters`.
    pub fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }

    /// The same identity with `system:authenticated` among its groups.
    pub fn authenticated(mut self) -> Identity {
        if !self.groups.iter().any(|g| g == AUTHENTICATED) {
            self.groups.push(AUTHENTICATED.into());
        }
        self
    }

    /// The identity of a ServiceAccount (`system:serviceaccount:<ns>:<name>`).
    pub fn service_account(namespace: &str, name: &str, uid: &str) -> Identity {
        Identity {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
            uid: uid.into(),
            extra: BTreeMap::new(),
        }
    }
}

/// Split one CSV record (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => cur.push(c),
            (false, '"') if cur.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            (false, '"') => return Err("bare \" in non-quoted field".into()),
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                was_quoted = false;
            }
            (false, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("extraneous or missing \" in quoted field".into());
    }
    out.push(cur);
    Ok(out)
}

/// Parse a static token file: one `token,user,uid[,"group1,group2"]` per
/// line, as kube-apiserver's `--token-auth-file`. Blank lines are skipped.
pub fn parse_token_file(text: &str) -> Result<HashMap<String, Identity>, String> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let f = csv_fields(line).map_err(|e| format!("line {n}: {e}"))?;
        if f.len() < 3 {
            return Err(format!(
                "line {n}: token file records need at least 3 columns (token,user,uid), got {}",
                f.len()
            ));
        }
        let token = f[0].trim().to_string();
        if token.is_empty() {
            return Err(format!("line {n}: the token is empty"));
        }
        if out.contains_key(&token) {
            return Err(format!("line {n}: duplicate token"));
        }
        let groups = f
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let id = Identity {
            user: f[1].trim().to_string(),
            groups,
            uid: f[2].trim().to_string(),
            extra: BTreeMap::new(),
        }
        .authenticated();
        out.insert(token, id);
    }
    Ok(out)
}

/// A name and uid (`kubernetes.io.pod`, `.serviceaccount`, `.secret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NameUid {
    /// Object name.
    pub name: String,
    /// Object uid.
    pub uid: String,
}

/// The private `kubernetes.io` claim of a bound token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KubernetesClaim {
    /// Namespace of the ServiceAccount.
    pub namespace: String,
    /// The ServiceAccount.
    pub serviceaccount: NameUid,
    /// The pod the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<NameUid>,
    /// The Secret the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<NameUid>,
}

/// The claims of a bound service-account token (TokenRequest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundClaims {
    /// Audiences.
    pub aud: Vec<String>,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Not before.
    pub nbf: i64,
    /// Issuer.
    pub iss: String,
    /// Token id.
    pub jti: String,
    /// `system:serviceaccount:<ns>:<name>`.
    pub sub: String,
    /// Namespace, ServiceAccount and bound object.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

/// The object a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// A pod (name, uid).
    Pod(NameUid),
    /// A Secret (name, uid).
    Secret(NameUid),
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenInvalid(pub String);

/// Issues and validates service-account tokens.
pub struct ServiceAccountTokens {
    signer: Arc<TokenSigner>,
    issuer: String,
    audiences: Vec<String>,
    store: Arc<dyn Store>,
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl ServiceAccountTokens {
    /// Tokens signed by `signer`, issued as `issuer` (also the API audience).
    pub fn new(signer: Arc<TokenSigner>, issuer: &str, store: Arc<dyn Store>) -> Self {
        ServiceAccountTokens {
            signer,
            issuer: issuer.into(),
            audiences: vec![issuer.into()],
            store,
        }
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audiences the API accepts (and gives tokens requested without any).
    pub fn api_audiences(&self) -> &[String] {
        &self.audiences
    }

    /// The signer (its CA is what pods get as `ca.crt`).
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// Sign a token for a ServiceAccount; returns it and its expiry (Unix seconds).
    pub fn issue(
        &self,
        namespace: &str,
        sa: &NameUid,
        audiences: &[String],
        expiration_seconds: i64,
        bound: Option<&Bound>,
    ) -> Result<(String, i64), TokenInvalid> {
        let now = now_unix();
        let aud = if audiences.is_empty() {
            self.audiences.clone()
        } else {
            audiences.to_vec()
        };
        let (pod, secret) = match bound {
            Some(Bound::Pod(p)) => (Some(p.clone()), None),
            Some(Bound::Secret(s)) => (None, Some(s.clone())),
            None => (None, None),
        };
        let claims = BoundClaims {
            aud,
            exp: now + expiration_seconds,
            iat: now,
            nbf: now,
            iss: self.issuer.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            sub: format!("system:serviceaccount:{namespace}:{}", sa.name),
            kubernetes: KubernetesClaim {
                namespace: namespace.into(),
                serviceaccount: sa.clone(),
                pod,
                secret,
            },
        };
        let token = self
            .signer
            .sign_claims(&claims)
            .map_err(|e| TokenInvalid(e.to_string()))?;
        Ok((token, claims.exp))
    }

    fn object(&self, plural: &str, ns: &str, name: &str) -> Result<Option<Value>, TokenInvalid> {
        let info = resources::lookup("", "v1", plural).expect("core kinds are served");
        let kv = self
            .store
            .get(&info.key(Some(ns), name))
            .map_err(|e| TokenInvalid(format!("looking up {plural}: {e}")))?;
        Ok(kv.and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// The object exists with this uid (and is not being deleted, for pods).
    fn check_live(&self, plural: &str, ns: &str, want: &NameUid) -> Result<(), TokenInvalid> {
        let singular = plural.trim_end_matches('s');
        let obj = self
            .object(plural, ns, &want.name)?
            .ok_or_else(|| TokenInvalid(format!("{singular} \"{}\" not found", want.name)))?;
        let uid = obj.pointer("/metadata/uid").and_then(Value::as_str);
        if uid != Some(want.uid.as_str()) {
            return Err(TokenInvalid(format!(
                "{singular} UID ({}) does not match claim ({})",
                uid.unwrap_or(""),
                want.uid
            )));
        }
        if plural == "pods" && obj.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(TokenInvalid(format!(
                "pod \"{}\" is being deleted",
                want.name
            )));
        }
        Ok(())
    }

    /// Validate a token for `audiences` (None: the API audiences) and return
    /// its identity and expiry (Unix seconds; None for legacy tokens).
    pub fn validate(
        &self,
        token: &str,
        audiences: Option<&[String]>,
    ) -> Result<(Identity, Option<i64>), TokenInvalid> {
        let iss = unverified_issuer(token).ok_or_else(|| TokenInvalid("not a JWT".into()))?;
        if iss == LEGACY_ISSUER {
            let c: LegacyClaims = self
                .signer
                .verify(token)
                .map_err(|e| TokenInvalid(e.to_string()))?;
            let sa = NameUid {
                name: c.service_account_name.clone(),
                uid: c.service_account_uid.clone(),
            };
            self.check_live("serviceaccounts", &c.namespace, &sa)?;
            let secret = self
                .object("secrets", &c.namespace, &c.secret_name)?
                .ok_or_else(|| TokenInvalid(format!("secret \"{}\" not found", c.secret_name)))?;
            let stored = secret
                .pointer("/data/token")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
            if stored.as_deref() != Some(token.as_bytes()) {
                return Err(TokenInvalid("token does not match the secret".into()));
            }
            return Ok((
                Identity::service_account(&c.namespace, &sa.name, &sa.uid),
                None,
            ));
        }
        if iss != self.issuer {
            return Err(TokenInvalid(format!("unknown issuer {iss:?}")));
        }
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        v.leeway = 0;
        v.set_issuer(&[&self.issuer]);
        v.set_audience(audiences.unwrap_or(&self.audiences));
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        let c: BoundClaims = self
            .signer
            .verify_claims(token, &v)
            .map_err(|e| TokenInvalid(e.to_string()))?;
        let k = &c.kubernetes;
        let sub = format!(
            "system:serviceaccount:{}:{}",
            k.namespace, k.serviceaccount.name
        );
        if c.sub != sub {
            return Err(TokenInvalid("subject does not match the claims".into()));
        }
        self.check_live("serviceaccounts", &k.namespace, &k.serviceaccount)?;
        let mut id =
            Identity::service_account(&k.namespace, &k.serviceaccount.name, &k.serviceaccount.uid);
        if let Some(p) = &k.pod {
            self.check_live("pods", &k.namespace, p)?;
            id.extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![p.name.clone()],
            );
            id.extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![p.uid.clone()],
            );
        }
        if let Some(s) = &k.secret {
            self.check_live("secrets", &k.namespace, s)?;
        }
        id.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={}", c.jti)],
        );
        Ok((id, Some(c.exp)))
    }
}

/// The `iss` claim of a JWT, before any verification (to pick the validator).
fn unverified_issuer(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_string)
}

/// Bearer-token authentication: the static token file, then ServiceAccount
/// tokens, with a short cache of validated tokens.
#[derive(Default)]
pub struct Authenticator {
    static_tokens: HashMap<String, Identity>,
    service_accounts: Option<ServiceAccountTokens>,
    cache: Mutex<HashMap<String, (Identity, Instant)>>,
}

impl Authenticator {
    /// An authenticator over a static token map and optional SA tokens.
    pub fn new(
        static_tokens: HashMap<String, Identity>,
        service_accounts: Option<ServiceAccountTokens>,
    ) -> Authenticator {
        Authenticator {
            static_tokens,
            service_accounts,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Read `--token-auth-file`.
    pub fn load_token_file(path: &Path) -> Result<HashMap<String, Identity>, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        parse_token_file(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// ServiceAccount token issuing and validation, when configured.
    pub fn service_accounts(&self) -> Option<&ServiceAccountTokens> {
        self.service_accounts.as_ref()
    }

    /// The identity behind an `Authorization: Bearer` header value, if valid.
    pub fn authenticate_bearer(&self, token: &str) -> Option<Identity> {
        if token.is_empty() {
            return None;
        }
        if let Some(id) = self.static_tokens.get(token) {
            return Some(id.clone());
        }
        let sa = self.service_accounts.as_ref()?;
        let now = Instant::now();
        if let Some((id, until)) = self.cache.lock().expect("cache lock").get(token) {
            if *until > now {
                return Some(id.clone());
            }
        }
        match sa.validate(token, None) {
            Ok((id, exp)) => {
                let mut ttl = CACHE_TTL;
                if let Some(exp) = exp {
                    let left = (exp - now_unix()).max(0) as u64;
                    ttl = ttl.min(Duration::from_secs(left));
                }
                let mut cache = self.cache.lock().expect("cache lock");
                if cache.len() >= CACHE_MAX {
                    cache.retain(|_, (_, until)| *until > now);
                    if cache.len() >= CACHE_MAX {
                        cache.clear();
                    }
                }
                cache.insert(token.to_string(), (id.clone(), now + ttl));
                Some(id)
            }
            Err(e) => {
                tracing::debug!(error = %e, "service account token rejected");
                None
            }
        }
    }

    /// The identity from request headers (`Authorization: Bearer <token>`).
    pub fn authenticate_headers(&self, headers: &http::HeaderMap) -> Option<Identity> {
        let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.authenticate_bearer(token.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
    use crate::store::{Op, Precondition};
    use serde_json::json;

    #[test]
    fn token_file_parses_like_kube_apiserver() {
        let f = "t1,alice,u-1,\"devs,ops\"\n\nt2,bob,u-2\nt3,carol,u-3,admins,extra-col\n";
        let m = parse_token_file(f).unwrap();
        assert_eq!(m["t1"].user, "alice");
        assert_eq!(m["t1"].uid, "u-1");
        assert_eq!(m["t1"].groups, ["devs", "ops", AUTHENTICATED]);
        assert_eq!(m["t2"].groups, [AUTHENTICATED]);
        assert_eq!(m["t3"].groups, ["admins", AUTHENTICATED]);
        let e = parse_token_file("t1,alice\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("3 columns"), "{e}");
        assert!(parse_token_file("a,b,c\na,d,e\n")
            .unwrap_err()
            .contains("duplicate"));
        assert!(parse_token_file("a,b,c,\"x\n").is_err());
        assert!(parse_token_file(",b,c\n").unwrap_err().contains("empty"));
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        tokens: ServiceAccountTokens,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ca.crt"),
            "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let signer = Arc::new(TokenSigner::load_or_create(dir.path()).unwrap());
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(
                &dir.path().join("db.redb"),
                EmbeddedOptions::default(),
                None,
            )
            .unwrap(),
        );
        let tokens = ServiceAccountTokens::new(signer, DEFAULT_ISSUER, store.clone());
        Fixture {
            _dir: dir,
            store,
            tokens,
        }
    }

    async fn put(store: &Arc<dyn Store>, key: &str, v: Value) {
        store
            .txn(vec![Op::Put {
                key: key.into(),
                value: serde_json::to_vec(&v).unwrap().into(),
                precondition: Precondition::None,
            }])
            .await
            .unwrap();
    }

    async fn del(store: &Arc<dyn Store>, key: &str) {
        store
            .txn(vec![Op::Delete {
                key: key.into(),
                precondition: Precondition::None,
            }])
            .await
            .unwrap();
    }

    fn sa() -> NameUid {
        NameUid {
            name: "build".into(),
            uid: "sa-uid".into(),
        }
    }

    #[tokio::test]
    async fn bound_token_signs_verifies_and_follows_its_objects() {
        let f = fixture();
        put(
            &f.store,
            "/core/serviceaccounts/d/build",
            json!({"metadata": {"name": "build", "namespace": "d", "uid": "sa-uid"}}),
        )
        .await;
        put(
            &f.store,
            "/core/pods/d/web",
            json!({"metadata": {"name": "web", "namespace": "d", "uid": "pod-uid"}}),
        )
        .await;
        let pod = Bound::Pod(NameUid {
            name: "web".into(),
            uid: "pod-uid".into(),
        });
        let (token, exp) = f.tokens.issue("d", &sa(), &[], 3600, Some(&pod)).unwrap();
        assert!((exp - now_unix() - 3600).abs() <= 2);
        let (id, got_exp) = f.tokens.validate(&token, None).unwrap();
        assert_eq!(got_exp, Some(exp));
        assert_eq!(id.user, "system:serviceaccount:d:build");
        assert_eq!(
            id.groups,
            [
                "system:serviceaccounts",
                "system:serviceaccounts:d",
                AUTHENTICATED
            ]
        );
        assert_eq!(id.uid, "sa-uid");
        assert_eq!(
            id.extra["authentication.kubernetes.io/pod-name"],
            ["web".to_string()]
        );
        // The claims are Kubernetes' bound-token claims.
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["aud"], json!([DEFAULT_ISSUER]));
        assert_eq!(claims["iss"], DEFAULT_ISSUER);
        assert_eq!(claims["sub"], "system:serviceaccount:d:build");
        assert_eq!(claims["kubernetes.io"]["pod"]["uid"], "pod-uid");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "build");
        assert_eq!(claims["nbf"], claims["iat"]);

        // Another audience is not the API's.
        let (other_aud, _) = f
            .tokens
            .issue("d", &sa(), &["vault".into()], 3600, None)
            .unwrap();
        assert!(f.tokens.validate(&other_aud, None).is_err());
        assert!(f
            .tokens
            .validate(&other_aud, Some(&["vault".to_string()]))
            .is_ok());

        // Expired.
        let (expired, _) = f.tokens.issue("d", &sa(), &[], -5, None).unwrap();
        let e = f.tokens.validate(&expired, None).unwrap_err();
        assert!(e.0.contains("Expired"), "{e}");

        // Signed by another key.
        let g = fixture();
        let (foreign, _) = g.tokens.issue("d", &sa(), &[], 3600, None).unwrap();
        assert!(f.tokens.validate(&foreign, None).is_err());

        // Pod recreated with another uid, then deleted: the token dies with it.
        put(
            &f.store,
            "/core/pods/d/web",
            json!({"metadata": {"name": "web", "namespace": "d", "uid": "other"}}),
        )
        .await;
        assert!(f.tokens.validate(&token, None).is_err());
        del(&f.store, "/core/pods/d/web").await;
        let e = f.tokens.validate(&token, None).unwrap_err();
        assert!(e.0.contains("not found"), "{e}");

        // ServiceAccount deleted: unbound tokens die too.
        let (unbound, _) = f.tokens.issue("d", &sa(), &[], 3600, None).unwrap();
        assert!(f.tokens.validate(&unbound, None).is_ok());
        del(&f.store, "/core/serviceaccounts/d/build").await;
        assert!(f.tokens.validate(&unbound, None).is_err());
    }

    #[tokio::test]
    async fn legacy_secret_tokens_live_with_their_secret() {
        let f = fixture();
        put(
            &f.store,
            "/core/serviceaccounts/d/build",
            json!({"metadata": {"name": "build", "namespace": "d", "uid": "sa-uid"}}),
        )
        .await;
        let claims = LegacyClaims {
            iss: LEGACY_ISSUER.into(),
            sub: "system:serviceaccount:d:build".into(),
            namespace: "d".into(),
            secret_name: "tok".into(),
            service_account_name: "build".into(),
            service_account_uid: "sa-uid".into(),
        };
        let token = f.tokens.signer().sign(&claims).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&token);
        put(
            &f.store,
            "/core/secrets/d/tok",
            json!({"metadata": {"name": "tok", "namespace": "d"}, "data": {"token": b64}}),
        )
        .await;
        let (id, exp) = f.tokens.validate(&token, None).unwrap();
        assert_eq!(id.user, "system:serviceaccount:d:build");
        assert_eq!(exp, None);
        del(&f.store, "/core/secrets/d/tok").await;
        assert!(f.tokens.validate(&token, None).is_err());
    }

    #[tokio::test]
    async fn authenticator_order_and_cache() {
        let f = fixture();
        put(
            &f.store,
            "/core/serviceaccounts/d/build",
            json!({"metadata": {"name": "build", "namespace": "d", "uid": "sa-uid"}}),
        )
        .await;
        let (token, _) = f.tokens.issue("d", &sa(), &[], 3600, None).unwrap();
        let store = f.store.clone();
        let statics = parse_token_file("secret-1,alice,u1,devs\n").unwrap();
        let a = Authenticator::new(statics, Some(f.tokens));
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer secret-1".parse().unwrap(),
        );
        assert_eq!(a.authenticate_headers(&h).unwrap().user, "alice");
        h.insert(http::header::AUTHORIZATION, "Basic x".parse().unwrap());
        assert!(a.authenticate_headers(&h).is_none());
        assert!(a.authenticate_bearer("nope").is_none());
        assert_eq!(
            a.authenticate_bearer(&token).unwrap().user,
            "system:serviceaccount:d:build"
        );
        // Cached for a moment even after the ServiceAccount is gone.
        del(&store, "/core/serviceaccounts/d/build").await;
        assert!(a.authenticate_bearer(&token).is_some());
        a.cache.lock().unwrap().clear();
        assert!(a.authenticate_bearer(&token).is_none());
    }
}
