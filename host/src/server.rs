//! `shoal server`: open the store, make the PKI and kubeconfig, bootstrap
//! namespaces, start controllers, and serve the API over TLS.

use crate::api::{self, handlers, ApiConfig, AppState};
use crate::auth::Identity;
use crate::blobs::BlobStore;
use crate::controllers;
use crate::metrics::Metrics;
use crate::pki::{self, Pki};
use crate::plugin::{PluginRuntime, RuntimeConfig};
use crate::plugin_objects;
use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
use crate::store::{Op, Precondition, Store, StoreError};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the database, PKI and kubeconfig live.
    pub data_dir: PathBuf,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// API tunables.
    pub api: ApiConfig,
    /// Revisions of change log kept for watch resume.
    pub watch_history: u64,
    /// Scheduler options.
    pub scheduler: crate::scheduler::SchedulerConfig,
}

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Filesystem failure.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Key material.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// TLS setup.
    #[error("tls: {0}")]
    Tls(String),
    /// Store failure.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Plugin runtime failure.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    /// Bootstrapping objects failed.
    #[error("bootstrap: {0}")]
    Bootstrap(String),
}

/// What a started server tells its caller.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Bound address.
    pub addr: SocketAddr,
    /// Path of the admin kubeconfig.
    pub kubeconfig: PathBuf,
}

/// The namespaces every cluster starts with.
pub const SYSTEM_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

async fn bootstrap(store: &dyn Store) -> Result<(), ServerError> {
    let info = api::resources::lookup("", "v1", "namespaces").expect("namespaces are served");
    for ns in SYSTEM_NAMESPACES {
        let key = info.key(None, ns);
        if store.get(&key)?.is_some() {
            continue;
        }
        let obj =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        let mut obj = handlers::prepare_create(info, None, obj, false)
            .map_err(|e| ServerError::Tls(format!("bootstrap namespace {ns}: {:?}", e.status())))?;
        let mut sa = handlers::default_service_account(ns);
        let ops = vec![
            Op::Put {
                key,
                value: api::object::to_store(&mut obj),
                precondition: Precondition::Absent,
            },
            Op::Put {
                key: format!("/core/serviceaccounts/{ns}/default"),
                value: api::object::to_store(&mut sa),
                precondition: Precondition::None,
            },
        ];
        match store.txn(ops).await {
            Ok(_) | Err(StoreError::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn tls_config(pki: &Pki) -> Result<rustls::ServerConfig, ServerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes())
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.ca_cert.as_bytes()) {
        roots
            .add(c.map_err(|e| ServerError::Tls(e.to_string()))?)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    // Client certificates are optional at the TLS layer: requests without one
    // get 401 from the API layer (health endpoints stay open).
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Bearer-token authentication: the token file, and service-account tokens
/// signed with `<pki>/sa.key`.
fn authenticator(
    config: &ServerConfig,
    pki_dir: &std::path::Path,
    store: Arc<dyn Store>,
) -> Result<crate::auth::Authenticator, ServerError> {
    let a = &config.api.authn;
    let statics = match &a.token_auth_file {
        Some(p) => {
            crate::auth::Authenticator::load_token_file(p).map_err(ServerError::Bootstrap)?
        }
        None => Default::default(),
    };
    let signer = controllers::serviceaccount::TokenSigner::load_or_create(pki_dir)
        .map_err(|e| ServerError::Bootstrap(format!("service account signing key: {e}")))?;
    let sa =
        crate::auth::ServiceAccountTokens::new(Arc::new(signer), &a.service_account_issuer, store);
    Ok(crate::auth::Authenticator::new(statics, Some(sa)))
}

/// Run the server until `shutdown` resolves. `on_ready` is called once it serves.
pub async fn run(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(Ready) + Send,
) -> Result<(), ServerError> {
    let dir = &config.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| ServerError::Io(dir.display().to_string(), e))?;
    let metrics = Arc::new(Metrics::new());
    let m2 = metrics.clone();
    let store = EmbeddedStore::open(
        &dir.join("shoal.redb"),
        EmbeddedOptions {
            history: config.watch_history,
        },
        Some(Arc::new(move |d, n| m2.observe_commit(d, n))),
    )?;
    // Secrets are sealed at rest (AES-GCM, keys in pki/secrets-encryption.key).
    let store = crate::store::encrypted::seal_secrets(store, &dir.join("pki"))?;
    let store: Arc<dyn Store> = Arc::new(store);
    bootstrap(store.as_ref()).await?;

    let mut hosts = vec![config.listen.ip().to_string()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        hosts.push(h.trim().to_string());
    }
    let pki = Pki::load_or_create(&dir.join("pki"), &hosts)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServerError::Io(config.listen.to_string(), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| ServerError::Io("listener".into(), e))?;
    let kubeconfig = dir.join("admin.kubeconfig");
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let server_url = format!("https://{host}:{}", addr.port());
    let admin = pki.issue_client("admin", &["system:masters"])?;
    pki::write_private(
        &kubeconfig,
        &pki::kubeconfig("shoal", &server_url, &pki.ca_cert, "admin", &admin),
    )?;

    let blobs = BlobStore::new(&dir.join("blobs"));
    let runtime = Arc::new(PluginRuntime::new(RuntimeConfig {
        cache_dir: Some(dir.join("plugin-cache")),
        limits: Default::default(),
    })?);
    let authn = Arc::new(authenticator(&config, &dir.join("pki"), store.clone())?);
    let admission = Arc::new(crate::admission::WasmChain::new());
    // The authorization chain (host/src/authz), fed the plugin set below.
    let authz = crate::authz::Authorizer::new(store.clone());
    let hooks = api::Hooks {
        authz: Some(authz.clone()),
        authn: Some(authn.clone()),
        blobs: Some(blobs.clone()),
        plugin_check: Some(plugin_objects::module_check(runtime.clone(), blobs.clone())),
        pki_dir: Some(dir.join("pki")),
        node_metrics: Default::default(),
        admission: Some(admission.clone()),
        services: Default::default(),
    };
    let state = Arc::new(AppState {
        store: store.clone(),
        metrics,
        config: config.api.clone(),
        hooks,
    });
    plugin_objects::bootstrap(&state, &blobs)
        .await
        .map_err(|e| ServerError::Bootstrap(format!("{:?}", e.status()["message"])))?;
    crate::authz::bootstrap::ensure_defaults(&state)
        .await
        .map_err(|e| {
            ServerError::Bootstrap(format!("rbac defaults: {:?}", e.status()["message"]))
        })?;
    // The `default/kubernetes` Service and its EndpointSlice (api/services.rs).
    api::services::bootstrap_kubernetes(&state, addr)
        .await
        .map_err(|e| {
            ServerError::Bootstrap(format!("kubernetes service: {:?}", e.status()["message"]))
        })?;
    let lc = &config.api.node_lifecycle;
    api::validation::set_default_toleration_seconds(
        lc.default_not_ready_toleration_seconds,
        lc.default_unreachable_toleration_seconds,
    );
    let ctrl_stop = controllers::spawn(state.clone());
    let (plugin_ctl, plugin_set) =
        plugin_objects::PluginController::new(state.clone(), runtime.clone(), blobs.clone());
    let plugin_task = tokio::spawn(plugin_ctl.run());
    let slices_task = controllers::spawn_endpointslices(state.clone(), plugin_set.clone());
    // Admission plugins follow the same published set as the scheduler.
    admission.attach(state.clone(), plugin_set.clone());
    authz.start(plugin_set.clone());
    let sched_stop = Arc::new(tokio::sync::Notify::new());
    crate::scheduler::spawn(
        state.clone(),
        plugin_set,
        config.scheduler.clone(),
        sched_stop.clone(),
    );
    let app = api::router(state);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&pki)?));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Ready once the authorizer plugins (RBAC) decide, so clients see them.
    authz.wait_ready(Duration::from_secs(30)).await;
    on_ready(Ready { addr, kubeconfig });
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let authn = authn.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "tls handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
            let identity = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(Identity::from_cert);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    // A client certificate first, then a bearer token.
                    let id = identity
                        .clone()
                        .or_else(|| authn.authenticate_headers(req.headers()));
                    if let Some(id) = id {
                        req.extensions_mut().insert(id);
                    }
                    app.clone().oneshot(req.map(axum::body::Body::new))
                },
            );
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            let _ = watcher.watch(conn.into_owned()).await;
        });
    }
    drop(listener);
    ctrl_stop.notify_waiters();
    sched_stop.notify_waiters();
    plugin_task.abort();
    slices_task.abort();
    // In-flight requests get a moment to finish; open watches are cut.
    let _ = tokio::time::timeout(Duration::from_secs(3), graceful.shutdown()).await;
    Ok(())
}
