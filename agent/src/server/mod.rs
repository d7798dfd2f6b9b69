//! The agent's own HTTPS API, like the kubelet's port 10250: the host's API
//! server proxies `pods/log` and `pods/exec` here.
//!
//! Security: the agent serves with a self-signed certificate made at start
//! (the host does not verify it, as kube-apiserver does not verify kubelet
//! serving certificates unless `--kubelet-certificate-authority` is set), and
//! requires a client certificate signed by the cluster CA (the one in the
//! agent's kubeconfig) whose common name is [`HOST_CLIENT_CN`], the identity
//! the host issues itself at start. Any other client (a node's certificate,
//! an admin's) gets 403; one without a certificate fails the TLS handshake.
//!
//! Routes (see [`router`], the one place to add one):
//! - `GET /healthz`
//! - `GET /containerLogs/{namespace}/{pod}/{container}` ([`logs`])
//! - `GET /exec/{namespace}/{pod}/{container}` and
//!   `GET /exec/{namespace}/{pod}/{uid}/{container}` ([`exec`], WebSocket)

pub mod exec;
pub mod logs;
pub mod lookup;
pub mod portforward;
pub mod spdy;

use crate::runtime::ContainerRuntime;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// The common name of the only client the agent serves: the host's API
/// server (kubeadm calls its certificate `apiserver-kubelet-client`).
pub const HOST_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

/// Errors starting the agent's API.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the port.
    #[error("agent API on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// No CA to verify the host with.
    #[error("the kubeconfig has no cluster CA; the agent's API needs it to verify the API server")]
    NoCa,
    /// TLS or certificate setup.
    #[error("agent API TLS: {0}")]
    Tls(String),
}

/// What the handlers need.
pub struct AgentApi {
    /// The agent's data directory (pod state, bundles, logs).
    pub data_dir: PathBuf,
    /// The container runtime (for exec).
    pub runtime: Arc<dyn ContainerRuntime>,
}

/// The routes. Add a route here; handlers take `State<Arc<AgentApi>>`.
pub fn router(api: Arc<AgentApi>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(logs::container_logs),
        )
        .route(
            "/exec/{namespace}/{pod}/{container}",
            get(exec::exec).post(exec::exec),
        )
        .route(
            "/exec/{namespace}/{pod}/{uid}/{container}",
            get(exec::exec_with_uid).post(exec::exec_with_uid),
        )
        .route(
            "/portForward/{namespace}/{pod}",
            get(portforward::port_forward).post(portforward::port_forward),
        )
        .fallback(|| async {
            status_response(
                http::StatusCode::NOT_FOUND,
                "NotFound",
                "the agent does not serve this path",
            )
        })
        .with_state(api)
}

/// A Kubernetes `Status` failure response.
pub fn status_response(code: http::StatusCode, reason: &str, message: &str) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (
        code,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A bound, not yet serving agent API.
pub struct Listener {
    tcp: tokio::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
}

impl Listener {
    /// The bound port (useful when 0 was asked for).
    pub fn port(&self) -> u16 {
        self.tcp.local_addr().map(|a| a.port()).unwrap_or(0)
    }
}

/// Bind `addr` (or a free port on its IP when that port is taken) and
/// prepare TLS: a fresh self-signed serving certificate for `names`, and
/// client verification against the cluster CA (`ca_der`).
pub async fn bind(
    addr: SocketAddr,
    ca_der: &[Vec<u8>],
    names: &[String],
) -> Result<Listener, ServeError> {
    if ca_der.is_empty() {
        return Err(ServeError::NoCa);
    }
    let tls = tls_config(ca_der, names)?;
    let tcp = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        // Several agents on one address (tests, a second agent on a
        // machine): take a free port instead; the Node reports the real one,
        // and that is where the host connects.
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && addr.port() != 0 => {
            let any = SocketAddr::new(addr.ip(), 0);
            let l = tokio::net::TcpListener::bind(any)
                .await
                .map_err(|e| ServeError::Bind(any, e))?;
            tracing::warn!(
                wanted = %addr,
                using = ?l.local_addr().ok(),
                "agent API port is taken; serving on a free port instead"
            );
            l
        }
        Err(e) => return Err(ServeError::Bind(addr, e)),
    };
    Ok(Listener {
        tcp,
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    })
}

fn tls_config(ca_der: &[Vec<u8>], names: &[String]) -> Result<rustls::ServerConfig, ServeError> {
    let err = |e: &dyn std::fmt::Display| ServeError::Tls(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(|e| err(&e))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err(&e))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shoal-agent");
    for n in names {
        params.subject_alt_names.push(match n.parse::<IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(n.clone().try_into().map_err(|e| err(&e))?),
        });
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(|e| err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in ca_der {
        roots
            .add(CertificateDer::from(c.clone()))
            .map_err(|e| err(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| err(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(|e| err(&e))?;
    // HTTP/1.1 only: exec upgrades the connection.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The common name of a verified client certificate.
fn client_cn(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = x.subject().iter_common_name().next()?.as_str().ok()?;
    Some(cn.to_string())
}

/// Serve `app` on `listener` until `shutdown` resolves. Only the host's
/// client certificate ([`HOST_CLIENT_CN`]) is let through.
pub async fn serve(listener: Listener, app: Router, shutdown: impl Future<Output = ()> + Send) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "agent API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = listener.tls.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "agent API TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let cn = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(client_cn);
            let allowed = cn.as_deref() == Some(HOST_CLIENT_CN);
            let svc = hyper::service::service_fn(
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let cn = cn.clone();
                    async move {
                        if !allowed {
                            return Ok::<_, Infallible>(status_response(
                            http::StatusCode::FORBIDDEN,
                            "Forbidden",
                            &format!(
                                "user {:?} may not use the node agent's API (only {HOST_CLIENT_CN})",
                                cn.unwrap_or_default()
                            ),
                        ));
                        }
                        app.oneshot(req.map(Body::new)).await
                    }
                },
            );
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder = builder.http1_only();
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            let _ = conn.await;
        });
    }
}
