//! The Node object: registration with the machine's capacity, labels,
//! addresses and nodeInfo, and periodic status reports (the Lease is the
//! frequent heartbeat; see `lease.rs`).

use crate::config::AgentConfig;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::net::IpAddr;

/// The kubelet version nodes report.
pub const KUBELET_VERSION: &str = "v1.32.0-shoal";

/// Errors registering the node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The API refused or failed.
    #[error("node {0}: {1}")]
    Api(String, kube::Error),
}

/// Number of CPUs this process may use.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Total memory in bytes (MemTotal from /proc/meminfo).
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_image() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".into())
}

/// The local address the machine uses to reach `server_host:port` (a UDP
/// connect sends nothing; it only picks a route).
pub fn local_ip_towards(server_host: &str, port: u16) -> Option<IpAddr> {
    let target: IpAddr = server_host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
        .or_else(|| {
            use std::net::ToSocketAddrs;
            (server_host, port)
                .to_socket_addrs()
                .ok()?
                .next()
                .map(|a| a.ip())
        })?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect((target, port)).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Labels the agent owns on its Node.
pub fn labels(cfg: &AgentConfig) -> Value {
    let mut l = json!({
        "kubernetes.io/hostname": cfg.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch(),
    });
    if let Some(z) = &cfg.zone {
        l["topology.kubernetes.io/zone"] = json!(z);
    }
    l
}

/// The node status the agent reports now.
pub fn status(cfg: &AgentConfig, ip: IpAddr, runtime_version: &str) -> Value {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let cpu = cpu_count().to_string();
    let mem = format!("{}Ki", memory_bytes() / 1024);
    let capacity = json!({"cpu": cpu, "memory": mem, "pods": cfg.max_pods.to_string()});
    let cond = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let uname = nix::sys::utsname::uname().ok();
    let kernel = uname
        .as_ref()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    // Dual-stack nodes list an InternalIP per family, like kubelet.
    let mut addresses = vec![json!({"type": "InternalIP", "address": ip.to_string()})];
    for extra in cfg.extra_node_ips.iter().filter(|x| **x != ip) {
        addresses.push(json!({"type": "InternalIP", "address": extra.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": cfg.node_name}));
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "agent has sufficient memory available"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "agent has no disk pressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID", "agent has sufficient PID available"),
            cond("Ready", "True", "KubeletReady", "shoal agent is posting ready status"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.agent_port}},
        "addresses": addresses,
        "nodeInfo": {
            "machineID": read_trim("/etc/machine-id"),
            "systemUUID": read_trim("/sys/class/dmi/id/product_uuid"),
            "bootID": read_trim("/proc/sys/kernel/random/boot_id"),
            "kernelVersion": kernel,
            "osImage": os_image(),
            "containerRuntimeVersion": format!("runc://{runtime_version}"),
            "kubeletVersion": KUBELET_VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": arch(),
        },
    })
}

/// Create the Node (or update our labels on an existing one) and write its
/// status; returns the Node's uid.
pub async fn register(
    client: &kube::Client,
    cfg: &AgentConfig,
    ip: IpAddr,
    runtime_version: &str,
) -> Result<String, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let err = |e| NodeError::Api(cfg.node_name.clone(), e);
    let existing = api.get_opt(&cfg.node_name).await.map_err(err)?;
    if existing.is_none() {
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": cfg.node_name, "labels": labels(cfg)},
        }))
        .expect("a valid Node");
        match api.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(err(e)),
        }
    } else {
        let patch = json!({"metadata": {"labels": labels(cfg)}});
        api.patch(
            &cfg.node_name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
        .map_err(err)?;
    }
    let node = report(client, cfg, ip, runtime_version).await?;
    Ok(node.metadata.uid.unwrap_or_default())
}

/// Whether the server's copy of the Node has a Ready condition other than
/// True (errors count as "no": the regular status interval still runs).
pub async fn server_sees_not_ready(client: &kube::Client, name: &str) -> bool {
    let api: Api<Node> = Api::all(client.clone());
    let Ok(node) = api.get_status(name).await else {
        return false;
    };
    node.status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status != "True")
}

/// Write the node status (strategic merge: conditions merge by type).
pub async fn report(
    client: &kube::Client,
    cfg: &AgentConfig,
    ip: IpAddr,
    runtime_version: &str,
) -> Result<Node, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut status = status(cfg, ip, runtime_version);
    // A dual-stack node has two InternalIPs, which share the list's merge key
    // (`type`): replace the list rather than merge it, or one would be lost.
    if let Some(a) = status["addresses"].as_array_mut() {
        a.push(json!({"$patch": "replace"}));
    }
    let body = json!({ "status": status });
    api.patch_status(
        &cfg.node_name,
        &PatchParams::default(),
        &Patch::Strategic(body),
    )
    .await
    .map_err(|e| NodeError::Api(cfg.node_name.clone(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_has_capacity_labels_and_ready() {
        let mut cfg = AgentConfig::new("n1", "/tmp/x".into()).unwrap();
        cfg.zone = Some("zone-a".into());
        let s = status(&cfg, "10.1.2.3".parse().unwrap(), "1.1.5");
        assert_eq!(s["capacity"]["pods"], "110");
        assert_eq!(s["capacity"]["cpu"], cpu_count().to_string());
        assert!(s["capacity"]["memory"].as_str().unwrap().ends_with("Ki"));
        assert_eq!(s["nodeInfo"]["kubeletVersion"], KUBELET_VERSION);
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert_eq!(s["addresses"][0]["address"], "10.1.2.3");
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(ready["status"], "True");
        let l = labels(&cfg);
        assert_eq!(l["topology.kubernetes.io/zone"], "zone-a");
        assert_eq!(l["kubernetes.io/hostname"], "n1");
        // The status parses as a Kubernetes NodeStatus.
        let _: k8s_openapi::api::core::v1::NodeStatus = serde_json::from_value(s).unwrap();
        assert!(memory_bytes() > 0);
        assert_eq!(
            local_ip_towards("127.0.0.1", 6443),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
