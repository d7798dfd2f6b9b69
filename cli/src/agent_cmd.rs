//! `shoal agent` (the node agent), `shoal kubeconfig node` (a node identity
//! issued from the cluster CA), and the hidden `shoal pause` / `shoal shim`
//! processes the agent re-executes itself as.

use anyhow::Context;
use kube::config::Kubeconfig;
use serde_json::Value;
use shoal_agent::dev_images::DirImages;
use shoal_agent::image::{ImageService, ImageStore, RegistryConfig, TlsConfig};
use shoal_agent::AgentConfig;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `shoal agent` flags.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// API server URL (default: the kubeconfig's).
    #[arg(long)]
    server: Option<String>,
    /// Kubeconfig with the node's credentials (see `shoal kubeconfig node`).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Node name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Zone label (topology.kubernetes.io/zone).
    #[arg(long)]
    zone: Option<String>,
    /// Directory for pod state, container bundles and logs.
    #[arg(long, default_value = "/var/lib/shoal-agent")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeFlags,
}

/// Agent flags shared by `shoal agent` and `shoal up`.
#[derive(clap::Args, Clone)]
pub struct NodeFlags {
    /// The node's InternalIP (default: the address used to reach the server).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// runc binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// Registry configuration in k3s's registries.yaml shape (mirrors,
    /// credentials, TLS), applied on top of the default: docker.io served by
    /// the cluster's built-in registry.
    #[arg(long)]
    registries: Option<PathBuf>,
    /// Serve images from a directory of unpacked roots (`<dir>/<name>/rootfs`
    /// plus optional `config.json`) instead of the image store, for tests and development.
    #[arg(long, hide = true)]
    image_dir: Option<PathBuf>,
    /// Pod network: `bridge` (a node bridge, a veth per pod, IPv4 and IPv6
    /// from the node's podCIDRs, routes to other nodes' pods) or `none`
    /// (loopback only; leaves the machine's links and routes alone).
    #[arg(long, default_value = "bridge")]
    pod_network: shoal_agent::net::PodNetworkMode,
    /// Name of the node's pod bridge.
    #[arg(long, default_value = "shoal0", value_parser = shoal_agent::net::link_name)]
    pod_bridge: String,
    /// Service proxy: `nftables` (tables `ip shoal-proxy` and `ip6
    /// shoal-proxy` for ClusterIPs and NodePorts) or `none`. Runs with the
    /// bridge pod network only; `--pod-network none` implies no proxy.
    #[arg(long, default_value = "nftables")]
    proxy: shoal_agent::proxy::ProxyMode,
    /// Cluster DNS domain served by the node's DNS and written into pods'
    /// resolv.conf search path.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// Upstream DNS servers for names outside the cluster domain
    /// (`ADDR[:PORT][,ADDR[:PORT]]`); without them such names are REFUSED.
    #[arg(long, value_parser = shoal_agent::dns::upstreams_flag)]
    dns_upstream: Option<shoal_agent::dns::Upstreams>,
    /// Also serve cluster DNS on this address (e.g. `127.0.0.1:5353`; port 0
    /// picks one). Pods use the DNS on their bridge gateway, port 53.
    #[arg(long)]
    dns_listen: Option<std::net::SocketAddr>,
    /// Port of the agent's API (logs, exec) on the node IP, like the
    /// kubelet's 10250; 0 picks a free one.
    #[arg(long, default_value_t = 10250)]
    agent_port: u16,
    /// How often resource usage is pushed to the server (`15s`, `500ms`, `1m`).
    #[arg(long, default_value = "15s", value_parser = parse_interval)]
    metrics_interval: std::time::Duration,
}

/// Parse a duration such as `15s`, `500ms`, `2m` or plain seconds.
pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 15s, 500ms, 1m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration {s:?}: unit must be ms, s or m")),
    };
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!(
            "invalid duration {s:?}: must be above zero and at most a day"
        ));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `shoal kubeconfig` subcommands.
#[derive(clap::Subcommand)]
pub enum KubeconfigCmd {
    /// Print a kubeconfig for node NAME (user system:node:NAME in group
    /// system:nodes), signed by the cluster CA in DIR/pki. Run it where the server runs.
    Node {
        /// Node name.
        name: String,
        /// The server's data directory.
        #[arg(long, default_value = "/var/lib/shoal")]
        data_dir: PathBuf,
        /// Server URL written into the kubeconfig (default: the admin kubeconfig's).
        #[arg(long)]
        server: Option<String>,
    },
}

/// `shoal pause` flags (internal).
#[derive(clap::Args)]
pub struct PauseArgs {
    /// The pod's hostname.
    #[arg(long)]
    hostname: String,
}

/// `shoal shim` flags (internal).
#[derive(clap::Args)]
pub struct ShimArgs {
    #[arg(long)]
    id: String,
    #[arg(long)]
    bundle: PathBuf,
    #[arg(long)]
    runc: PathBuf,
    #[arg(long)]
    root: PathBuf,
    #[arg(long)]
    log: PathBuf,
    #[arg(long)]
    cgroup_path: String,
}

/// Run the sandbox process (before any thread exists).
pub fn pause(a: PauseArgs) -> i32 {
    shoal_agent::runtime::pause::run(&a.hostname)
}

/// Run a container monitor.
pub fn shim(a: ShimArgs) -> i32 {
    shoal_agent::runtime::shim::run(shoal_agent::runtime::shim::ShimArgs {
        id: a.id,
        bundle: a.bundle,
        runc: a.runc,
        root: a.root,
        log: a.log,
        cgroup_path: a.cgroup_path,
    })
}

/// TLS for the built-in registry: the kubeconfig's CA and client certificate,
/// so nodes pull with the identity they use for the API.
fn registry_tls(kc: &Kubeconfig) -> TlsConfig {
    // Serialized, because the key is a secret type kube-rs does not expose.
    let v = serde_json::to_value(kc).unwrap_or_default();
    let current = v["current-context"].as_str().unwrap_or_default();
    let context = v["contexts"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == current).or(cs.first()))
        .map(|c| c["context"].clone())
        .unwrap_or_default();
    let pick = |list: &str, key: &str, name: &Value| {
        v[list]
            .as_array()
            .and_then(|xs| xs.iter().find(|x| &x["name"] == name).or(xs.first()))
            .map(|x| x[key].clone())
            .unwrap_or_default()
    };
    let cluster = pick("clusters", "cluster", &context["cluster"]);
    let user = pick("users", "user", &context["user"]);
    let s = |x: &Value| x.as_str().map(str::to_string);
    TlsConfig {
        ca_data: s(&cluster["certificate-authority-data"]),
        ca_file: s(&cluster["certificate-authority"]).map(PathBuf::from),
        cert_data: s(&user["client-certificate-data"]),
        cert_file: s(&user["client-certificate"]).map(PathBuf::from),
        key_data: s(&user["client-key-data"]),
        key_file: s(&user["client-key"]).map(PathBuf::from),
        insecure_skip_verify: cluster["insecure-skip-tls-verify"] == true,
    }
}

/// The image source the agent uses: the image store pulling through the
/// cluster's built-in registry (plus `--registries`), or `--image-dir`.
fn images(
    flags: &NodeFlags,
    data_dir: &Path,
    server: &str,
    kc: &Kubeconfig,
) -> anyhow::Result<Arc<dyn ImageService>> {
    if let Some(dir) = &flags.image_dir {
        return Ok(Arc::new(DirImages::new(dir.clone())));
    }
    let mut config = RegistryConfig::builtin_mirror(server, registry_tls(kc));
    if let Some(path) = &flags.registries {
        config.merge(
            RegistryConfig::load(path).with_context(|| format!("reading {}", path.display()))?,
        );
    }
    Ok(Arc::new(ImageStore::new(data_dir, config).with_context(
        || format!("image store in {}", data_dir.display()),
    )?))
}

/// The agent configuration from flags.
pub fn agent_config(
    node_name: Option<String>,
    zone: Option<String>,
    data_dir: PathBuf,
    flags: &NodeFlags,
) -> anyhow::Result<AgentConfig> {
    let name = node_name.unwrap_or_else(shoal_agent::config::default_node_name);
    let mut cfg = AgentConfig::new(&name, data_dir)?;
    cfg.zone = zone;
    cfg.node_ip = flags.node_ip;
    cfg.runc = flags.runc.clone();
    cfg.pod_network = flags.pod_network;
    cfg.bridge_name = flags.pod_bridge.clone();
    cfg.agent_port = flags.agent_port;
    cfg.metrics_interval = flags.metrics_interval;
    cfg.proxy = flags.proxy;
    shoal_agent::dns::index::Zone::new(&flags.cluster_domain)?;
    cfg.dns.cluster_domain = flags.cluster_domain.clone();
    cfg.dns.upstreams = flags.dns_upstream.clone().map(|u| u.0).unwrap_or_default();
    cfg.dns.listen = flags.dns_listen;
    Ok(cfg)
}

/// Run the agent and the pods it hosts until `shutdown`, calling `on_ready`
/// once registered. `kc` is the node's kubeconfig.
pub async fn run_agent_with(
    cfg: AgentConfig,
    kc: Kubeconfig,
    server: Option<String>,
    flags: &NodeFlags,
    shutdown: impl Future<Output = ()> + Send,
    on_ready: impl FnOnce(shoal_agent::Ready) + Send,
) -> anyhow::Result<()> {
    let mut kube_config = kube::Config::from_custom_kubeconfig(
        kc.clone(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading kubeconfig")?;
    if let Some(s) = &server {
        kube_config.cluster_url = s.parse().context("--server")?;
    }
    let url = kube_config.cluster_url.to_string();
    let images = images(flags, &cfg.data_dir, &url, &kc)?;
    let dir = cfg.data_dir.clone();
    shoal_agent::run(cfg, kube_config, images, shutdown, on_ready)
        .await
        .with_context(|| format!("agent with data dir {}", dir.display()))
}

/// `shoal agent`.
pub async fn run_agent(
    a: AgentArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let kc = Kubeconfig::read_from(&a.kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", a.kubeconfig.display()))?;
    let cfg = agent_config(a.node_name, a.zone, a.data_dir, &a.node)?;
    run_agent_with(cfg, kc, a.server, &a.node, shutdown, |r| {
        println!("shoal agent ready: node {} ({})", r.node_name, r.node_ip);
    })
    .await
}

/// A kubeconfig for node `name` issued from the CA under `data_dir/pki`.
pub fn node_kubeconfig(data_dir: &Path, name: &str, server: &str) -> anyhow::Result<String> {
    let pki_dir = data_dir.join("pki");
    anyhow::ensure!(
        pki_dir.join("ca.key").exists(),
        "no cluster CA at {} (run this where the server's data directory is)",
        pki_dir.display()
    );
    let pki = shoal_host::pki::Pki::load_or_create(&pki_dir, &[])?;
    let user = format!("system:node:{name}");
    let cert = pki.issue_client(&user, &["system:nodes"])?;
    Ok(shoal_host::pki::kubeconfig(
        "shoal",
        server,
        &pki.ca_cert,
        &user,
        &cert,
    ))
}

/// The server URL in the admin kubeconfig of a data directory.
fn admin_server(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("admin.kubeconfig");
    let kc = Kubeconfig::read_from(&path).with_context(|| format!("reading {}", path.display()))?;
    kc.clusters
        .into_iter()
        .find_map(|c| c.cluster.and_then(|c| c.server))
        .with_context(|| format!("no server in {}", path.display()))
}

/// `shoal kubeconfig …`.
pub fn kubeconfig(cmd: KubeconfigCmd) -> anyhow::Result<()> {
    match cmd {
        KubeconfigCmd::Node {
            name,
            data_dir,
            server,
        } => {
            AgentConfig::new(&name, PathBuf::new())?;
            let server = match server {
                Some(s) => s,
                None => admin_server(&data_dir)?,
            };
            print!("{}", node_kubeconfig(&data_dir, &name, &server)?);
            Ok(())
        }
    }
}
