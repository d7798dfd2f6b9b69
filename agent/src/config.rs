//! Agent configuration: one typed struct with defaults; the CLI fills it.

use crate::pods::backoff::Backoff;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Errors in the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The node name is not a DNS subdomain.
    #[error("invalid node name {0:?}: must be lowercase letters, digits, '-' and '.'")]
    NodeName(String),
}

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Node name (also the Lease name and `kubernetes.io/hostname`).
    pub node_name: String,
    /// `topology.kubernetes.io/zone` label, if any.
    pub zone: Option<String>,
    /// Where pod state, bundles and logs live.
    pub data_dir: PathBuf,
    /// The node's InternalIP (default: the local address used to reach the server).
    pub node_ip: Option<IpAddr>,
    /// runc binary.
    pub runc: PathBuf,
    /// The `shoal` binary to re-execute as `shoal pause` and `shoal shim`.
    pub exe: PathBuf,
    /// cgroup parent of all pod cgroups.
    pub cgroup_parent: String,
    /// Lease duration written into the Lease.
    pub lease_duration_seconds: i32,
    /// How often the Lease is renewed.
    pub lease_renew_interval: Duration,
    /// How often the full node status is written.
    pub status_interval: Duration,
    /// Container restart back-off.
    pub backoff: Backoff,
    /// Pod capacity advertised.
    pub max_pods: u32,
    /// Port of the agent's API for the host (logs, exec), like the kubelet's
    /// 10250; 0 picks a free one. Reported in the Node's daemonEndpoints.
    pub agent_port: u16,
    /// Pod network: a bridge with per-pod veths, or loopback only.
    pub pod_network: crate::net::PodNetworkMode,
    /// Name of the node's pod bridge.
    pub bridge_name: String,
    /// Further InternalIPs to report (dual-stack: the node's address of the
    /// other family; found on the node IP's interface when empty).
    pub extra_node_ips: Vec<IpAddr>,
    /// How often resource usage is pushed to the host (`metrics.k8s.io`).
    pub metrics_interval: Duration,
    /// Service proxy (with the bridge pod network only).
    pub proxy: crate::proxy::ProxyMode,
    /// Cluster DNS: domain, upstreams, extra listen address.
    pub dns: crate::dns::DnsConfig,
}

impl AgentConfig {
    /// Defaults for a node name and data directory.
    pub fn new(node_name: &str, data_dir: PathBuf) -> Result<AgentConfig, ConfigError> {
        let valid = !node_name.is_empty()
            && node_name.len() <= 253
            && node_name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && !node_name.starts_with(['-', '.'])
            && !node_name.ends_with(['-', '.']);
        if !valid {
            return Err(ConfigError::NodeName(node_name.into()));
        }
        Ok(AgentConfig {
            node_name: node_name.into(),
            zone: None,
            data_dir,
            node_ip: None,
            runc: PathBuf::from("runc"),
            // The running binary itself, even if its file is replaced meanwhile
            // (an upgrade, a rebuild): the kernel keeps this inode reachable.
            exe: PathBuf::from("/proc/self/exe"),
            cgroup_parent: "shoal".into(),
            lease_duration_seconds: 40,
            lease_renew_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            backoff: Backoff::default(),
            max_pods: 110,
            agent_port: 10250,
            pod_network: crate::net::PodNetworkMode::Bridge,
            bridge_name: "shoal0".into(),
            extra_node_ips: Vec::new(),
            metrics_interval: Duration::from_secs(15),
            proxy: crate::proxy::ProxyMode::Nftables,
            dns: crate::dns::DnsConfig::default(),
        })
    }
}

/// The machine's host name, lowercased, as a default node name.
pub fn default_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
        .trim()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_validated() {
        assert!(AgentConfig::new("node-1.example", "/tmp/x".into()).is_ok());
        assert!(AgentConfig::new("Node_1", "/tmp/x".into()).is_err());
        assert!(AgentConfig::new("", "/tmp/x".into()).is_err());
        assert!(AgentConfig::new("-a", "/tmp/x".into()).is_err());
    }
}
