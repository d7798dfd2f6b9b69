//! A client for one registry endpoint over the OCI distribution API: manifests,
//! streamed blob downloads, and token (`WWW-Authenticate: Bearer`) or basic auth.

use super::auth::{parse_challenges, Challenge, Credentials};
use super::config::{split_url, TlsConfig};
use base64::Engine;
pub use bytes::Bytes;
use futures::future::BoxFuture;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, ReqBody>;

/// How long to wait for response headers (and for each body chunk).
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Query-value escaping that leaves registry host names readable.
pub(crate) const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'~');
/// Largest manifest or token response read into memory.
const MAX_DOCUMENT: usize = 8 * 1024 * 1024;

/// Errors talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The registry answered with an error status.
    #[error("{method} {url}: {status}: {message}")]
    Status {
        /// Request method.
        method: String,
        /// Request URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Distribution error code (`MANIFEST_UNKNOWN`, …), if given.
        code: Option<String>,
        /// Message from the registry.
        message: String,
    },
    /// The registry refused our credentials (or we had none).
    #[error("{0}: unauthorized (check imagePullSecrets or the registry's auth config)")]
    Unauthorized(String),
    /// Connection, TLS or timeout failure.
    #[error("{0}")]
    Transport(String),
    /// Content did not match its digest.
    #[error("content of {url} hashes to {actual}, expected {expected}")]
    Digest {
        /// What was fetched.
        url: String,
        /// Expected digest.
        expected: String,
        /// Actual digest.
        actual: String,
    },
    /// The registry's answer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// TLS configuration error (bad PEM, unreadable file).
    #[error("tls config: {0}")]
    Tls(String),
    /// Local I/O.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl DistError {
    /// Whether the registry said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DistError::Status { status: 404, .. })
    }
}

/// Sends buffered distribution-API requests. `uri` is a path with query
/// (`/v2/...`) or an absolute URL from a `Location` header. Implemented by
/// [`RegistryClient`], and by the CLI over its kubeconfig client.
pub trait Transport: Send + Sync {
    /// Send one request and read the whole response.
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, DistError>>;
}

/// A client for one registry endpoint.
pub struct RegistryClient {
    http: HttpClient,
    /// `scheme://host[:port]`.
    origin: String,
    /// Path prefix of the endpoint (usually empty).
    prefix: String,
    /// `ns` query parameter sent to mirrors.
    ns: Option<String>,
    creds: Option<Credentials>,
    auth: tokio::sync::Mutex<AuthState>,
}

#[derive(Default)]
struct AuthState {
    /// The last challenge the endpoint sent, which decides how to authenticate.
    challenge: Option<Challenge>,
    /// Bearer tokens by scope.
    tokens: HashMap<String, String>,
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let r = rustls_native_certs::load_native_certs();
        for e in &r.errors {
            tracing::debug!(error = %e, "loading system CA certificates");
        }
        r.certs
    })
}

/// PEM text, or base64 of PEM text (kubeconfig `*-data` style).
fn pem_bytes(data: &str) -> Result<Vec<u8>, DistError> {
    if data.contains("-----BEGIN") {
        Ok(data.as_bytes().to_vec())
    } else {
        let compact: String = data.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| DistError::Tls(format!("neither PEM nor base64 PEM: {e}")))
    }
}

fn read_source(
    data: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<Option<Vec<u8>>, DistError> {
    if let Some(d) = data {
        return pem_bytes(d).map(Some);
    }
    if let Some(f) = file {
        return std::fs::read(f)
            .map(Some)
            .map_err(|e| DistError::Tls(format!("{}: {e}", f.display())));
    }
    Ok(None)
}

/// Accepts any server certificate: only for `insecure_skip_verify`.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Build the rustls client configuration for an endpoint.
pub fn tls_client_config(tls: Option<&TlsConfig>) -> Result<rustls::ClientConfig, DistError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DistError::Tls(e.to_string()))?;
    let default = TlsConfig::default();
    let tls = tls.unwrap_or(&default);
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
        if let Some(pem) = read_source(&tls.ca_data, &tls.ca_file)? {
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| DistError::Tls(format!("CA certificate: {e}")))?;
                roots
                    .add(c)
                    .map_err(|e| DistError::Tls(format!("CA certificate: {e}")))?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let cert = read_source(&tls.cert_data, &tls.cert_file)?;
    let key = read_source(&tls.key_data, &tls.key_file)?;
    match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<_, _>>()
                .map_err(|e| DistError::Tls(format!("client certificate: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|e| DistError::Tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| DistError::Tls(format!("client certificate: {e}")))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(DistError::Tls(
            "a client certificate needs both cert and key".into(),
        )),
    }
}

fn full(b: Bytes) -> ReqBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

/// Read a distribution error body's first message and code.
fn error_message(body: &[u8]) -> (Option<String>, String) {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorItem {
        code: Option<String>,
        message: Option<String>,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) if !e.errors.is_empty() => {
            let first = &e.errors[0];
            (
                first.code.clone(),
                first
                    .message
                    .clone()
                    .or_else(|| first.code.clone())
                    .unwrap_or_default(),
            )
        }
        _ => (
            None,
            String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string(),
        ),
    }
}

/// Turn a non-success response (with its body) into an error.
pub fn status_error(method: &Method, url: &str, status: StatusCode, body: &[u8]) -> DistError {
    let (code, message) = error_message(body);
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("").to_string()
    } else {
        message
    };
    DistError::Status {
        method: method.to_string(),
        url: url.to_string(),
        status: status.as_u16(),
        code,
        message,
    }
}

/// The scope a request to `path` needs (`repository:<name>:pull[,push]`).
fn scope_for(method: &Method, path: &str) -> Option<String> {
    let rest = path.split('?').next()?.strip_prefix("/v2/")?;
    let name = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .map(|i| &rest[..i])?;
    let actions = if matches!(*method, Method::GET | Method::HEAD) {
        "pull"
    } else {
        "pull,push"
    };
    Some(format!("repository:{name}:{actions}"))
}

impl RegistryClient {
    /// A client for the endpoint at `base` (`scheme://host[:port][/path]`).
    pub fn new(
        base: &str,
        tls: Option<&TlsConfig>,
        creds: Option<Credentials>,
        ns: Option<String>,
    ) -> Result<RegistryClient, DistError> {
        let (scheme, host, prefix) = split_url(base).map_err(DistError::Protocol)?;
        let cfg = tls_client_config(tls)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(cfg)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(RegistryClient {
            http: client,
            origin: format!("{scheme}://{host}"),
            prefix,
            ns,
            creds,
            auth: Default::default(),
        })
    }

    /// The full URL for a path (`/v2/...`) or an absolute URL (kept as is).
    fn url(&self, uri: &str) -> String {
        let mut url = if uri.starts_with("http://") || uri.starts_with("https://") {
            uri.to_string()
        } else if !self.prefix.is_empty() && uri.starts_with(&self.prefix) {
            format!("{}{uri}", self.origin)
        } else {
            format!("{}{}{uri}", self.origin, self.prefix)
        };
        if let Some(ns) = &self.ns {
            if url.starts_with(&self.origin) && !url.contains("ns=") {
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!(
                    "{url}{sep}ns={}",
                    percent_encoding::utf8_percent_encode(ns, QUERY_VALUE)
                );
            }
        }
        url
    }

    async fn raw(
        &self,
        method: &Method,
        url: &str,
        headers: &HeaderMap,
        body: Bytes,
        authorization: Option<&str>,
    ) -> Result<Response<hyper::body::Incoming>, DistError> {
        let mut req = Request::builder().method(method.clone()).uri(url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(a) = authorization {
            req = req.header(header::AUTHORIZATION, a);
        }
        if !body.is_empty() || matches!(*method, Method::PUT | Method::POST | Method::PATCH) {
            req = req.header(header::CONTENT_LENGTH, body.len());
        }
        let req = req
            .body(full(body))
            .map_err(|e| DistError::Protocol(format!("{url}: {e}")))?;
        match tokio::time::timeout(TIMEOUT, self.http.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                // The interesting cause (connection refused, TLS) is nested.
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                Err(DistError::Transport(format!("{method} {url}: {msg}")))
            }
            Err(_) => Err(DistError::Transport(format!(
                "{method} {url}: no response within {TIMEOUT:?}"
            ))),
        }
    }

    /// The Authorization header for `scope` under the current challenge.
    async fn authorization(&self, scope: Option<&str>) -> Result<Option<String>, DistError> {
        if let Some(Credentials::Bearer(t)) = &self.creds {
            return Ok(Some(format!("Bearer {t}")));
        }
        let mut st = self.auth.lock().await;
        let Some(ch) = st.challenge.clone() else {
            return Ok(None);
        };
        match ch.scheme.as_str() {
            "basic" => Ok(match &self.creds {
                Some(Credentials::Basic { username, password }) => {
                    Some(Credentials::basic_header(username, password))
                }
                _ => None,
            }),
            "bearer" => {
                let scope = scope.unwrap_or("").to_string();
                if let Some(t) = st.tokens.get(&scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let token = self.fetch_token(&ch, &scope).await?;
                st.tokens.insert(scope, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
            _ => Ok(None),
        }
    }

    /// Exchange credentials (or nothing, for anonymous pulls) for a bearer token.
    async fn fetch_token(&self, ch: &Challenge, scope: &str) -> Result<String, DistError> {
        let realm = ch
            .params
            .get("realm")
            .ok_or_else(|| DistError::Protocol("bearer challenge without realm".into()))?;
        let mut query = form_query(&[("service", ch.params.get("service").map(String::as_str))]);
        if !scope.is_empty() {
            let extra = form_query(&[("scope", Some(scope))]);
            query = if query.is_empty() {
                extra
            } else {
                format!("{query}&{extra}")
            };
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = if query.is_empty() {
            realm.clone()
        } else {
            format!("{realm}{sep}{query}")
        };
        let auth = match &self.creds {
            Some(Credentials::Basic { username, password }) => {
                Some(Credentials::basic_header(username, password))
            }
            _ => None,
        };
        let resp = self
            .raw(
                &Method::GET,
                &url,
                &HeaderMap::new(),
                Bytes::new(),
                auth.as_deref(),
            )
            .await?;
        let status = resp.status();
        let body = read_limited(resp.into_body(), MAX_DOCUMENT).await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(DistError::Unauthorized(format!("token service {realm}")));
        }
        if !status.is_success() {
            return Err(status_error(&Method::GET, &url, status, &body));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| DistError::Protocol(format!("token response from {realm}: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| DistError::Protocol(format!("token response from {realm} has no token")))
    }

    /// Send a request with authentication: on a 401 learn the challenge, get a
    /// token (or use basic credentials) and retry once.
    pub async fn request(
        &self,
        method: Method,
        uri: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Response<hyper::body::Incoming>, DistError> {
        let url = self.url(uri);
        let mut scope = scope_for(&method, uri.trim_start_matches(&self.origin));
        let mut retried = false;
        loop {
            let authz = self.authorization(scope.as_deref()).await?;
            let resp = self
                .raw(&method, &url, &headers, body.clone(), authz.as_deref())
                .await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(header::WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            let usable = challenges
                .iter()
                .find(|c| c.scheme == "bearer")
                .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
                .cloned();
            let can_retry = !retried
                && usable.is_some()
                && !matches!(self.creds, Some(Credentials::Bearer(_)))
                && (usable.as_ref().is_some_and(|c| c.scheme == "bearer")
                    || (self.creds.is_some() && authz.is_none()));
            if !can_retry {
                return Err(DistError::Unauthorized(format!("{method} {url}")));
            }
            let ch = usable.expect("checked above");
            if let Some(s) = ch.params.get("scope") {
                scope = Some(s.clone());
            }
            let mut st = self.auth.lock().await;
            if let Some(s) = &scope {
                st.tokens.remove(s);
            }
            st.challenge = Some(ch);
            drop(st);
            retried = true;
        }
    }

    /// Fetch a manifest: its bytes, media type and digest (computed, and checked
    /// against a pinned digest).
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Bytes, String, String), DistError> {
        let uri = format!("/v2/{repo}/manifests/{reference}");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static(super::manifest::MANIFEST_ACCEPT),
        );
        let resp = self
            .request(Method::GET, &uri, headers, Bytes::new())
            .await?;
        let status = resp.status();
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        let body = read_limited(resp.into_body(), MAX_DOCUMENT).await?;
        if !status.is_success() {
            return Err(status_error(&Method::GET, &self.url(&uri), status, &body));
        }
        let digest = super::digest_of(&body);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(DistError::Digest {
                url: self.url(&uri),
                expected: reference.to_string(),
                actual: digest,
            });
        }
        Ok((body, media_type, digest))
    }

    /// Download a blob to `dest` (streamed), checking it hashes to `digest`.
    /// Follows redirects (blob storage often lives elsewhere).
    pub async fn fetch_blob(
        &self,
        repo: &str,
        digest: &str,
        dest: &Path,
    ) -> Result<u64, DistError> {
        let uri = format!("/v2/{repo}/blobs/{digest}");
        let mut resp = self
            .request(Method::GET, &uri, HeaderMap::new(), Bytes::new())
            .await?;
        let mut url = self.url(&uri);
        for _ in 0..5 {
            if !resp.status().is_redirection() {
                break;
            }
            let loc = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| DistError::Protocol(format!("{url}: redirect without Location")))?
                .to_string();
            url = if loc.starts_with('/') {
                format!("{}{loc}", self.origin)
            } else {
                loc
            };
            // Redirect targets (object storage) get no registry credentials.
            resp = self
                .raw(&Method::GET, &url, &HeaderMap::new(), Bytes::new(), None)
                .await?;
        }
        let status = resp.status();
        if !status.is_success() {
            let body = read_limited(resp.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            return Err(status_error(&Method::GET, &url, status, &body));
        }
        let mut file = tokio::fs::File::create(dest).await?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = resp.into_body();
        loop {
            let frame = match tokio::time::timeout(TIMEOUT, body.frame()).await {
                Err(_) => {
                    return Err(DistError::Transport(format!(
                        "{url}: stalled for {TIMEOUT:?}"
                    )))
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(DistError::Transport(format!("{url}: {e}"))),
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                hasher.update(&data);
                size += data.len() as u64;
                file.write_all(&data).await?;
            }
        }
        file.flush().await?;
        file.sync_all().await?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(DistError::Digest {
                url,
                expected: digest.to_string(),
                actual,
            });
        }
        Ok(size)
    }
}

impl Transport for RegistryClient {
    fn send(&self, req: Request<Bytes>) -> BoxFuture<'_, Result<Response<Bytes>, DistError>> {
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let uri = parts.uri.to_string();
            let resp = self
                .request(parts.method, &uri, parts.headers, body)
                .await?;
            let (parts, body) = resp.into_parts();
            let body = read_limited(body, MAX_DOCUMENT).await?;
            Ok(Response::from_parts(parts, body))
        })
    }
}

fn form_query(pairs: &[(&str, Option<&str>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            v.map(|v| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, QUERY_VALUE)
                )
            })
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Read a whole body, refusing more than `limit` bytes.
pub async fn read_limited(body: hyper::body::Incoming, limit: usize) -> Result<Bytes, DistError> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(TIMEOUT, limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(DistError::Transport(format!("reading response: {e}"))),
        Err(_) => Err(DistError::Transport("response body timed out".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_from_paths() {
        assert_eq!(
            scope_for(&Method::GET, "/v2/library/busybox/manifests/latest").as_deref(),
            Some("repository:library/busybox:pull")
        );
        assert_eq!(
            scope_for(&Method::POST, "/v2/a/blobs/uploads/?ns=x").as_deref(),
            Some("repository:a:pull,push")
        );
        assert_eq!(scope_for(&Method::GET, "/v2/").as_deref(), None);
    }

    #[test]
    fn urls_keep_prefix_and_add_ns() {
        let c = RegistryClient::new(
            "https://mirror:5000/sub",
            None,
            None,
            Some("ghcr.io".into()),
        )
        .unwrap();
        assert_eq!(
            c.url("/v2/a/manifests/x"),
            "https://mirror:5000/sub/v2/a/manifests/x?ns=ghcr.io"
        );
        assert_eq!(
            c.url("/sub/v2/a/blobs/uploads/1?s=2"),
            "https://mirror:5000/sub/v2/a/blobs/uploads/1?s=2&ns=ghcr.io"
        );
        assert_eq!(c.url("https://other/x"), "https://other/x");
    }

    #[test]
    fn registry_errors_are_read() {
        let (code, msg) = error_message(
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        );
        assert_eq!(code.as_deref(), Some("MANIFEST_UNKNOWN"));
        assert_eq!(msg, "manifest unknown");
    }
}
