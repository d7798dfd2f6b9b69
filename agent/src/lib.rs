//! Shoal node agent: registers the Node, renews its Lease, and runs the pods
//! bound to it as runc containers in per-pod sandboxes (DESIGN §7).
//!
//! Layout: `node.rs` and `lease.rs` talk to the API about the node; `pods/`
//! turns pod specs into running containers (one worker task per pod);
//! `runtime/` is the seam to the machine (runc, sandboxes, mounts);
//! `image/` provides image roots; `logs.rs` reads and writes container logs.
//!
//! No unsafe code, except the calls into the system's libnftables in
//! `proxy/nft.rs` (each allowed and explained there).
#![deny(unsafe_code)]

pub mod config;
pub mod dev_images;
pub mod dns;
pub mod image;
pub mod lease;
pub mod logs;
pub mod net;
pub mod netns;
pub mod node;
pub mod pods;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod stats;
pub mod storage;

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
    /// The agent's API (logs, exec) could not start.
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    /// Pod networking.
    #[error("pod network: {0}")]
    Net(#[from] net::NetError),
    /// runc is missing.
    #[error("runc ({0}) is not installed or does not run")]
    NoRunc(String),
    /// Local filesystem.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// Cluster DNS could not start.
    #[error(transparent)]
    Dns(#[from] dns::server::DnsError),
    /// The service proxy could not start.
    #[error("service proxy: {0}")]
    Proxy(#[from] proxy::ProxyError),
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
    mut cfg: AgentConfig,
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
    // Routes to other nodes' IPv6 pod ranges need their IPv6 InternalIP.
    if cfg.pod_network == net::PodNetworkMode::Bridge && cfg.extra_node_ips.is_empty() {
        cfg.extra_node_ips
            .extend(net::dual_stack_address(node_ip).await);
    }
    // The agent's API (logs, exec) for the host, bound before registering so
    // the Node reports the real port (0 picks a free one).
    let runtime = Arc::new(runtime);
    let api_listener = server::bind(
        std::net::SocketAddr::new(node_ip, cfg.agent_port),
        kube_config.root_cert.as_deref().unwrap_or_default(),
        &[node_ip.to_string(), cfg.node_name.clone()],
    )
    .await?;
    cfg.agent_port = api_listener.port();
    let api_app = server::router(Arc::new(server::AgentApi {
        data_dir: cfg.data_dir.clone(),
        runtime: runtime.clone(),
    }));
    let api_task = tokio::spawn(server::serve(api_listener, api_app, std::future::pending()));
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
                        // Like the kubelet: when the server shows the node as not
                        // Ready (the node lifecycle controller marked it Unknown
                        // while this agent was away), post the status at once
                        // instead of at the next status interval.
                        if node::server_sees_not_ready(&client, &cfg.node_name).await {
                            if let Err(e) = node::report(&client, &cfg, node_ip, &version).await {
                                tracing::warn!(error = %e, "reporting node status");
                            }
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

    let usage = tokio::spawn(stats::run(
        client.clone(),
        cfg.node_name.clone(),
        cfg.data_dir.clone(),
        cfg.metrics_interval,
    ));
    let (network, net_task) = net::start(&cfg, client.clone())?;
    // The service proxy runs with the bridge pod network only: with `none`
    // the agent leaves the machine's networking (and nftables) alone.
    let proxy = match cfg.pod_network {
        net::PodNetworkMode::Bridge => proxy::start(cfg.proxy, client.clone(), &cfg.node_name)?,
        net::PodNetworkMode::None => None,
    };
    // Cluster DNS: on the pod gateways with the bridge network, and on
    // `--dns-listen` if given.
    cfg.dns.on_gateways = cfg.pod_network == net::PodNetworkMode::Bridge;
    let (pod_dns, dns_task) = dns::start(&cfg.dns, client.clone(), &cfg.node_name)?;
    let ctx = Arc::new(PodContext {
        dns: pod_dns,
        network,
        runtime: runtime.clone(),
        images,
        api: Arc::new(KubeCluster(client.clone())),
        node_name: cfg.node_name.clone(),
        host_ip: node_ip.to_string(),
        data_dir: cfg.data_dir.clone(),
        cgroup_parent: cfg.cgroup_parent.clone(),
        backoff: cfg.backoff,
    });
    // Report the local-path storage root before the node takes pods.
    let storage_root = storage::root(&cfg.data_dir);
    if let Err(e) = storage::announce(&client, &cfg.node_name, &storage_root).await {
        tracing::warn!(error = %e, "reporting the local-path storage root");
    }
    let reclaimer = tokio::spawn(storage::run(
        client.clone(),
        cfg.node_name.clone(),
        storage_root,
    ));
    on_ready(Ready {
        node_name: cfg.node_name.clone(),
        node_ip,
    });
    pods::run(ctx, client, &mut shutdown).await;
    if let Some(p) = proxy {
        p.stop().await;
    }
    dns_task.abort();
    reclaimer.abort();
    heartbeat.abort();
    if let Some(t) = net_task {
        t.abort();
    }
    api_task.abort();
    usage.abort();
    Ok(())
}
