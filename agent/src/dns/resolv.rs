//! A pod's `/etc/resolv.conf` from its `dnsPolicy` and `dnsConfig`, as
//! kubelet builds it (pkg/kubelet/network/dns), and the FQDN line of its
//! `/etc/hosts`.

use k8s_openapi::api::core::v1::Pod;
use std::net::IpAddr;

/// kubelet's limits: at most 3 nameservers and 32 search domains.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The parts of a resolv.conf.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub nameservers: Vec<String>,
    /// The `search` list.
    pub searches: Vec<String>,
    /// `options` entries (`ndots:5`, `edns0`).
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parse the lines a resolver reads (`nameserver`, `search`/`domain`, `options`).
    pub fn parse(text: &str) -> ResolvConf {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    r.searches = words.map(str::to_string).collect();
                }
                Some("options") => r.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for n in &self.nameservers {
            s.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            s.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            s.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        s
    }
}

/// The node's resolv.conf for `dnsPolicy: Default`: `/etc/resolv.conf`, or
/// systemd-resolved's upstream list when that file only names its local stub
/// (unreachable from a pod), as kubeadm configures kubelet.
pub fn node_resolv_conf() -> String {
    let etc = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let parsed = ResolvConf::parse(&etc);
    let only_loopback = !parsed.nameservers.is_empty()
        && parsed
            .nameservers
            .iter()
            .all(|n| n.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    if only_loopback {
        if let Ok(real) = std::fs::read_to_string("/run/systemd/resolve/resolv.conf") {
            return real;
        }
    }
    etc
}

fn push_unique(list: &mut Vec<String>, v: &str) {
    if !list.iter().any(|x| x == v) {
        list.push(v.to_string());
    }
}

/// The option's name (`ndots` of `ndots:5`).
fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// A pod's resolv.conf. `cluster_dns` are the node-local DNS addresses
/// (empty: no cluster DNS, so ClusterFirst falls back to Default, as kubelet
/// does); `node` is the node's own resolv.conf text.
pub fn pod_resolv_conf(
    pod: &Pod,
    cluster_domain: &str,
    cluster_dns: &[IpAddr],
    node: &str,
) -> String {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host = ResolvConf::parse(node);
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        "ClusterFirst" => !host_network,
        _ => false,
    } && !cluster_dns.is_empty();
    let mut r = if policy == "None" {
        ResolvConf::default()
    } else if cluster_first {
        let d = cluster_domain.trim_end_matches('.');
        let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.to_string()];
        for s in &host.searches {
            push_unique(&mut searches, s);
        }
        ResolvConf {
            nameservers: cluster_dns.iter().map(|i| i.to_string()).collect(),
            searches,
            options: vec!["ndots:5".into()],
        }
    } else {
        host
    };
    if let Some(c) = spec.and_then(|s| s.dns_config.as_ref()) {
        for n in c.nameservers.iter().flatten() {
            push_unique(&mut r.nameservers, n);
        }
        for s in c.searches.iter().flatten() {
            push_unique(&mut r.searches, s);
        }
        for o in c.options.iter().flatten() {
            let entry = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            };
            if entry.is_empty() {
                continue;
            }
            // A dnsConfig option replaces one of the same name.
            let name = option_name(&entry).to_string();
            r.options.retain(|x| option_name(x) != name);
            r.options.push(entry);
        }
    }
    r.nameservers.truncate(MAX_NAMESERVERS);
    r.searches.truncate(MAX_SEARCHES);
    r.render()
}

/// The names a pod's own addresses carry in its /etc/hosts: with a
/// `subdomain`, `<hostname>.<subdomain>.<ns>.svc.<domain>` first, then the
/// hostname (kubelet's format).
pub fn pod_host_names(pod: &Pod, hostname: &str, cluster_domain: &str) -> String {
    let spec = pod.spec.as_ref();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    match spec
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(sub) => format!(
            "{hostname}.{sub}.{ns}.svc.{}\t{hostname}",
            cluster_domain.trim_end_matches('.')
        ),
        None => hostname.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    const NODE: &str = "# generated\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";

    fn dns() -> Vec<IpAddr> {
        vec![
            "10.244.1.1".parse().unwrap(),
            "fd00:244:1::1".parse().unwrap(),
        ]
    }

    #[test]
    fn cluster_first_uses_the_node_local_dns() {
        let p = pod(json!({"containers": []}));
        assert_eq!(
            pod_resolv_conf(&p, "cluster.local", &dns(), NODE),
            "nameserver 10.244.1.1\nnameserver fd00:244:1::1\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
        // Without a cluster DNS (no pod network) kubelet falls back to Default.
        assert_eq!(
            pod_resolv_conf(&p, "cluster.local", &[], NODE),
            ResolvConf::parse(NODE).render()
        );
    }

    #[test]
    fn policies_and_host_network() {
        let default = pod(json!({"containers": [], "dnsPolicy": "Default"}));
        assert_eq!(
            pod_resolv_conf(&default, "cluster.local", &dns(), NODE),
            "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
        );
        let hostnet = pod(json!({"containers": [], "hostNetwork": true}));
        assert!(pod_resolv_conf(&hostnet, "cluster.local", &dns(), NODE)
            .starts_with("nameserver 192.0.2.53\n"));
        let with_host_net = pod(
            json!({"containers": [], "hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}),
        );
        assert!(
            pod_resolv_conf(&with_host_net, "cluster.local", &dns(), NODE)
                .starts_with("nameserver 10.244.1.1\n")
        );
        let none = pod(json!({"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            pod_resolv_conf(&none, "cluster.local", &dns(), NODE),
            "nameserver 1.1.1.1\nsearch a.example\noptions ndots:2 edns0\n"
        );
    }

    #[test]
    fn dns_config_merges_like_kubernetes() {
        let p = pod(json!({"containers": [], "dnsConfig": {
            "nameservers": ["10.244.1.1", "9.9.9.9", "8.8.8.8"],
            "searches": ["svc.cluster.local", "extra.example"],
            "options": [{"name": "ndots", "value": "1"}, {"name": "single-request"}]}}));
        assert_eq!(
            pod_resolv_conf(&p, "cluster.local", &dns(), ""),
            "nameserver 10.244.1.1\nnameserver fd00:244:1::1\nnameserver 9.9.9.9\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local extra.example\n\
             options ndots:1 single-request\n"
        );
    }

    #[test]
    fn host_names_carry_the_subdomain_fqdn() {
        let p = pod(json!({"containers": [], "hostname": "db-0", "subdomain": "db"}));
        assert_eq!(
            pod_host_names(&p, "db-0", "cluster.local"),
            "db-0.db.shop.svc.cluster.local\tdb-0"
        );
        assert_eq!(
            pod_host_names(&pod(json!({"containers": []})), "p", "cluster.local"),
            "p"
        );
    }
}
