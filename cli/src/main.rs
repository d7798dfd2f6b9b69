//! The `shoal` binary: a thin layer over the host (and later agent) libraries.

mod agent_cmd;
mod image_cmd;
mod plugin_cmd;
mod secrets_cmd;
mod up_cmd;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shoal_host::api::ApiConfig;
use shoal_host::server::{self, ServerConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A Kubernetes-compatible orchestrator whose policies are WebAssembly plugins"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane: the Kubernetes API over HTTPS on an embedded store.
    Server(ServerArgs),
    /// Install, list and swap Wasm plugins.
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCmd),
    /// Import image archives into the cluster's registry and list its images.
    #[command(subcommand)]
    Image(image_cmd::ImageCmd),
    /// Run the node agent: register the Node and run its pods with runc.
    Agent(agent_cmd::AgentArgs),
    /// Run the server and a local node agent in one process.
    Up(up_cmd::UpArgs),
    /// Issue kubeconfigs from the cluster CA.
    #[command(subcommand)]
    Kubeconfig(agent_cmd::KubeconfigCmd),
    /// Manage the keys that encrypt Secrets at rest.
    #[command(subcommand)]
    Secrets(secrets_cmd::SecretsCmd),
    /// A pod sandbox (started by the agent).
    #[command(hide = true)]
    Pause(agent_cmd::PauseArgs),
    /// A container monitor (started by the agent).
    #[command(hide = true)]
    Shim(agent_cmd::ShimArgs),
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Directory for the database, certificates and admin.kubeconfig.
    #[arg(long, default_value = "/var/lib/shoal")]
    data_dir: PathBuf,
    /// Address to serve the API on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Revisions of change history kept for watch resume (older resumes get 410 Gone).
    #[arg(long, default_value_t = 200_000)]
    watch_history: u64,
    /// Seconds between watch bookmarks for clients that ask for them.
    #[arg(long, default_value_t = 60)]
    bookmark_interval: u64,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Run the built-in scheduler policies compiled natively instead of as Wasm
    /// (for benchmarking the Wasm overhead).
    #[arg(long, hide = true)]
    native_policies: bool,
    /// How often each HorizontalPodAutoscaler is evaluated (`15s`, `500ms`, `1m`).
    #[arg(long, default_value = "15s", value_parser = agent_cmd::parse_interval)]
    hpa_sync_period: Duration,
    #[command(flatten)]
    node_controllers: NodeControllerFlags,
    #[command(flatten)]
    authn: AuthnFlags,
    #[command(flatten)]
    services: ServiceFlags,
}

/// Service address allocation and the `kubernetes` Service (`shoal server` and `shoal up`).
#[derive(clap::Args, Clone)]
pub(crate) struct ServiceFlags {
    /// Service cluster-IP ranges: one CIDR, or two of different families
    /// (comma-separated); the first one's family is the cluster's primary.
    #[arg(long, default_value = "10.43.0.0/16,fd43::/112")]
    service_cidr: String,
    /// Range node ports are allocated from (`FIRST-LAST`).
    #[arg(long, default_value = "30000-32767")]
    service_node_port_range: String,
    /// Address the `kubernetes` Service's endpoint advertises (default: the
    /// listen address, or the machine's primary non-loopback IPv4 when
    /// listening on all addresses).
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
}

impl ServiceFlags {
    /// Check these settings and write them into the API configuration.
    pub(crate) fn apply(&self, api: &mut ApiConfig) -> anyhow::Result<()> {
        let mut cfg = shoal_host::api::services::ServiceConfig::parse(
            &self.service_cidr,
            &self.service_node_port_range,
        )
        .map_err(|e| anyhow::anyhow!("--service-cidr / --service-node-port-range: {e}"))?;
        cfg.advertise_address = self.advertise_address;
        api.services = cfg;
        Ok(())
    }
}

/// Bearer-token authentication settings (`shoal server` and `shoal up`).
#[derive(clap::Args, Clone)]
pub(crate) struct AuthnFlags {
    /// Static bearer tokens: CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Issuer (`iss`) of service-account tokens; also the API audience.
    #[arg(long, default_value = shoal_host::auth::DEFAULT_ISSUER)]
    service_account_issuer: String,
}

impl AuthnFlags {
    /// Write these settings into the API configuration.
    pub(crate) fn apply(&self, api: &mut ApiConfig) {
        api.authn = shoal_host::auth::AuthnConfig {
            token_auth_file: self.token_auth_file.clone(),
            service_account_issuer: self.service_account_issuer.clone(),
        };
    }
}

/// Node IPAM and node lifecycle settings (`shoal server` and `shoal up`).
#[derive(clap::Args, Clone)]
pub(crate) struct NodeControllerFlags {
    /// Cluster CIDRs node pod ranges are carved from: at most one IPv4 and one
    /// IPv6, comma-separated; `spec.podCIDRs` follow this order.
    #[arg(long, default_value = "10.42.0.0/16,fd42::/56")]
    cluster_cidr: String,
    /// Prefix length of each node's IPv4 pod range.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size_ipv4: u8,
    /// Prefix length of each node's IPv6 pod range.
    #[arg(long, default_value_t = 64)]
    node_cidr_mask_size_ipv6: u8,
    /// How long a node may go without a heartbeat before it is marked
    /// Unknown and tainted unreachable (`40s`, `500ms`, `1m`).
    #[arg(long, default_value = "40s", value_parser = agent_cmd::parse_interval)]
    node_monitor_grace_period: Duration,
    /// `tolerationSeconds` of the not-ready toleration every pod gets by default.
    #[arg(long, default_value_t = 300)]
    default_not_ready_toleration_seconds: i64,
    /// `tolerationSeconds` of the unreachable toleration every pod gets by default.
    #[arg(long, default_value_t = 300)]
    default_unreachable_toleration_seconds: i64,
}

impl NodeControllerFlags {
    /// Write these settings into the API configuration the controllers read.
    pub(crate) fn apply(&self, api: &mut ApiConfig) -> anyhow::Result<()> {
        api.ipam = shoal_host::controllers::nodeipam::IpamConfig::parse(
            &self.cluster_cidr,
            self.node_cidr_mask_size_ipv4,
            self.node_cidr_mask_size_ipv6,
        )
        .context("--cluster-cidr / --node-cidr-mask-size-*")?;
        api.node_lifecycle = shoal_host::controllers::nodelifecycle::LifecycleConfig {
            grace: self.node_monitor_grace_period,
            default_not_ready_toleration_seconds: self.default_not_ready_toleration_seconds,
            default_unreachable_toleration_seconds: self.default_unreachable_toleration_seconds,
        };
        Ok(())
    }
}

/// mimalloc: the API server allocates and frees many small JSON values per
/// request; glibc malloc spent ~15% of the API threads' time doing it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = real_main() {
        // One clear line (with causes), no backtrace: this is a user-facing CLI.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // The sandbox and the shim run without an async runtime: the sandbox must
    // unshare namespaces while it is the only thread.
    let cli = match cli.command {
        Command::Pause(a) => std::process::exit(agent_cmd::pause(a)),
        Command::Shim(a) => std::process::exit(agent_cmd::shim(a)),
        Command::Kubeconfig(c) => return agent_cmd::kubeconfig(c),
        Command::Secrets(c) => return secrets_cmd::run(c),
        command => Cli { command },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Server(a) => rt.block_on(run_server(a)),
        Command::Plugin(c) => rt.block_on(plugin_cmd::run(c)),
        Command::Image(c) => rt.block_on(image_cmd::run(c)),
        Command::Agent(a) => rt.block_on(agent_cmd::run_agent(a, shutdown_signal())),
        Command::Up(a) => rt.block_on(up_cmd::run(a, shutdown_signal())),
        Command::Pause(_) | Command::Shim(_) | Command::Kubeconfig(_) | Command::Secrets(_) => {
            unreachable!()
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}

async fn run_server(a: ServerArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig {
        data_dir: a.data_dir.clone(),
        listen: a.listen,
        api: ApiConfig {
            max_body_bytes: a.max_body_bytes,
            bookmark_interval: Duration::from_secs(a.bookmark_interval.max(1)),
            hpa_sync_period: a.hpa_sync_period,
            ..ApiConfig::default()
        },
        watch_history: a.watch_history,
        scheduler: shoal_host::scheduler::SchedulerConfig {
            native_builtins: a.native_policies,
        },
    };
    a.node_controllers.apply(&mut config.api)?;
    a.authn.apply(&mut config.api);
    a.services.apply(&mut config.api)?;
    server::run(config, shutdown_signal(), |r| {
        println!(
            "shoal server ready on https://{} (kubeconfig: {})",
            r.addr,
            r.kubeconfig.display()
        );
    })
    .await
    .with_context(|| format!("server with data dir {}", a.data_dir.display()))
}
