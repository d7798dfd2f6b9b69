//! Shoal node agent: registers the Node, renews its Lease, and runs the pods
//! bound to it as runc containers in per-pod sandboxes (DESIGN §7).
//!
//! Layout: `node.rs` and `lease.rs` talk to the API about the node; `pods/`
//! turns pod specs into running containers (one worker task per pod);
//! `runtime/` is the seam to the machine (runc, sandboxes, mounts);
//! `image/` provides image roots; `logs.rs` reads and writes container logs.
#![forbid(unsafe_code)]

pub mod config;
pub mod dev_images;
pub mod image;
pub mod lease;
pub mod logs;
pub mod node;
pub mod pods;
pub mod runtime;

pub use config::AgentConfig;

use pods::cluster::KubeCluster;
use pods::worker::PodContext;
use runtime::runc::RuncRuntime;
use std::future::Future;
use std::sync::Arc;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Registering the node.
    #[error(transparent)]
    Node(#[from] node::NodeError),
    /// Building the API client.
    #[error("api client: {0}")]
    Client(#[from] kube::Error),
    /// runc is missing.
    #[error("runc ({0}) is not installed or does not run")]
    NoRunc(String),
    /// Local filesystem.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// What a started agent tells its caller.
#[derive(Debug, Clone)]
pub struct Ready {
    /// Node name.
    pub node_name: String,
    /// The node's InternalIP.
    pub node_ip: std::net::IpAddr,
}

/// Run the agent until `shutdown` resolves. Containers keep running after
/// it returns; the next agent adopts them.
pub async fn run(
    cfg: AgentConfig,
    kube_config: kube::Config,
    images: Arc<dyn image::ImageService>,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(Ready) + Send,
) -> Result<(), AgentError> {
    let runc_root = cfg.data_dir.join("runc");
    for d in [&cfg.data_dir, &runc_root] {
        std::fs::create_dir_all(d).map_err(|e| AgentError::Io(d.display().to_string(), e))?;
    }
    let runtime = RuncRuntime::new(cfg.runc.clone(), runc_root, cfg.exe.clone());
    if !runtime.available() {
        return Err(AgentError::NoRunc(cfg.runc.display().to_string()));
    }
    let runtime_version = runtime.version().unwrap_or_else(|| "unknown".into());
    let url = kube_config.cluster_url.clone();
    let node_ip = cfg
        .node_ip
        .or_else(|| {
            node::local_ip_towards(
                url.host().unwrap_or("127.0.0.1"),
                url.port_u16().unwrap_or(443),
            )
        })
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let client = kube::Client::try_from(kube_config)?;
    tokio::pin!(shutdown);
    // The server may not be up yet (or be restarting): keep trying, as kubelet does.
    let mut delay = std::time::Duration::from_secs(1);
    let node_uid = loop {
        match node::register(&client, &cfg, node_ip, &runtime_version).await {
            Ok(uid) => break uid,
            Err(e) => tracing::warn!(error = %e, retry_in = ?delay, "registering node"),
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(10));
    };
    if let Err(e) = lease::renew(
        &client,
        &cfg.node_name,
        &node_uid,
        cfg.lease_duration_seconds,
    )
    .await
    {
        tracing::warn!(error = %e, "first lease renewal");
    }

    let heartbeat = {
        let (client, cfg, version) = (client.clone(), cfg.clone(), runtime_version.clone());
        tokio::spawn(async move {
            let mut lease_tick = tokio::time::interval(cfg.lease_renew_interval);
            let mut status_tick = tokio::time::interval(cfg.status_interval);
            lease_tick.tick().await;
            status_tick.tick().await;
            loop {
                tokio::select! {
                    _ = lease_tick.tick() => {
                        if let Err(e) = lease::renew(&client, &cfg.node_name, &node_uid, cfg.lease_duration_seconds).await {
                            tracing::warn!(error = %e, "renewing lease");
                        }
                    }
                    _ = status_tick.tick() => {
                        if let Err(e) = node::report(&client, &cfg, node_ip, &version).await {
                            tracing::warn!(error = %e, "reporting node status");
                        }
                    }
                }
            }
        })
    };

    let ctx = Arc::new(PodContext {
        runtime: Arc::new(runtime),
        images,
        api: Arc::new(KubeCluster(client.clone())),
        node_name: cfg.node_name.clone(),
        host_ip: node_ip.to_string(),
        data_dir: cfg.data_dir.clone(),
        cgroup_parent: cfg.cgroup_parent.clone(),
        backoff: cfg.backoff,
    });
    on_ready(Ready {
        node_name: cfg.node_name.clone(),
        node_ip,
    });
    pods::run(ctx, client, &mut shutdown).await;
    heartbeat.abort();
    Ok(())
}
