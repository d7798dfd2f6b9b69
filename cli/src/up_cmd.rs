//! `shoal up`: the control plane and a local node agent in one process, the
//! single-machine default. The agent gets a node identity issued in-process.

use crate::agent_cmd::{self, NodeFlags};
use anyhow::Context;
use shoal_host::server::{self, ServerConfig};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `shoal up` flags.
#[derive(clap::Args)]
pub struct UpArgs {
    /// Directory for the database, certificates, kubeconfigs and (under
    /// `agent/`) the node's pods.
    #[arg(long, default_value = "/var/lib/shoal")]
    data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Node name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Zone label (topology.kubernetes.io/zone).
    #[arg(long)]
    zone: Option<String>,
    #[command(flatten)]
    node: NodeFlags,
    #[command(flatten)]
    node_controllers: crate::NodeControllerFlags,
    #[command(flatten)]
    authn: crate::AuthnFlags,
    #[command(flatten)]
    services: crate::ServiceFlags,
}

/// Run server and agent until `shutdown`.
pub async fn run(
    a: UpArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_tx = stop_tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = signal_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut config = ServerConfig {
        data_dir: a.data_dir.clone(),
        listen: a.listen,
        api: Default::default(),
        watch_history: 200_000,
        scheduler: Default::default(),
    };
    a.node_controllers.apply(&mut config.api)?;
    a.authn.apply(&mut config.api);
    a.services.apply(&mut config.api)?;
    let server = server::run(config, stopped(stop_rx.clone()), move |r| {
        let _ = ready_tx.send(r);
    });
    let agent_cfg = agent_cmd::agent_config(
        a.node_name.clone(),
        a.zone.clone(),
        a.data_dir.join("agent"),
        &a.node,
    )?;
    let data_dir = a.data_dir.clone();
    let flags = a.node.clone();
    let agent_stop = stop_rx.clone();
    let agent = async move {
        let Ok(ready) = ready_rx.await else {
            return Ok(());
        };
        let host = if ready.addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            ready.addr.ip().to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let url = format!("https://{host}:{}", ready.addr.port());
        let yaml = agent_cmd::node_kubeconfig(&data_dir, &agent_cfg.node_name, &url)?;
        let kc = kube::config::Kubeconfig::from_yaml(&yaml)?;
        let kubeconfig = ready.kubeconfig.clone();
        let on_ready = move |r: shoal_agent::Ready| {
            println!(
                "shoal up ready: API on {url} (kubeconfig: {}), node {} ({})",
                kubeconfig.display(),
                r.node_name,
                r.node_ip
            );
        };
        agent_cmd::run_agent_with(agent_cfg, kc, None, &flags, stopped(agent_stop), on_ready).await
    };
    let agent = async {
        let r: anyhow::Result<()> = agent.await;
        // A failed agent stops the whole process rather than leaving a node-less cluster.
        if r.is_err() {
            let _ = stop_tx.send(true);
        }
        r
    };
    let (s, ag) = tokio::join!(server, agent);
    s.with_context(|| format!("server with data dir {}", a.data_dir.display()))?;
    ag
}
