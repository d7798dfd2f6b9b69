//! What the proxy programs for one Service: its ports, cluster IPs and
//! NodePorts, and for each port the endpoints this node sends traffic to,
//! chosen as Kubernetes' proxies choose them (readiness, terminating
//! fallback, topology hints, traffic policies) plus the weights the router
//! plugin wrote on the slices. Pure: no I/O.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Label joining an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Slice annotation with per-address weights (`{"10.0.0.1": 9}`) written by
/// the router plugin; absent means weight 1 for every endpoint.
pub const WEIGHTS_ANNOTATION: &str = "routing.shoal.dev/weights";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when unset (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

/// A transport protocol a service port uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The name nft uses.
    pub fn nft(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    fn parse(p: Option<&str>) -> Option<Protocol> {
        match p.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

/// One backend address and port with its share of new connections.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    /// Pod (or hand-made) address.
    pub addr: IpAddr,
    /// Target port.
    pub port: u16,
    /// Relative weight; 0 takes no new connections.
    pub weight: u32,
}

/// One port of one Service, with everything its rules need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `namespace/name/protocol/port-name`, stable for chain names.
    pub id: String,
    /// Protocol.
    pub protocol: Protocol,
    /// The service port.
    pub port: u16,
    /// Cluster IPs (both families for dual-stack).
    pub cluster_ips: Vec<IpAddr>,
    /// NodePort, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// ClientIP affinity timeout in seconds, when `sessionAffinity: ClientIP`.
    pub affinity_timeout: Option<u32>,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// Endpoints for cluster-IP traffic (topology and internal policy applied).
    pub cluster_endpoints: Vec<Endpoint>,
    /// This node's endpoints, for `externalTrafficPolicy: Local`.
    pub local_endpoints: Vec<Endpoint>,
}

/// What the proxy knows about its own node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
}

/// One endpoint address of a slice, before selection.
#[derive(Debug)]
struct Candidate {
    ep: Endpoint,
    ready: bool,
    serving: bool,
    terminating: bool,
    local: bool,
    for_nodes: Option<Vec<String>>,
    for_zones: Option<Vec<String>>,
}

/// A Service's `namespace/name`.
pub fn service_key(svc: &Service) -> String {
    format!(
        "{}/{}",
        svc.metadata.namespace.as_deref().unwrap_or("default"),
        svc.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The `namespace/name` of the Service a slice belongs to, if labelled.
pub fn slice_service_key(slice: &EndpointSlice) -> Option<String> {
    let name = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(format!(
        "{}/{}",
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        name
    ))
}

fn weights(slice: &EndpointSlice) -> BTreeMap<String, u32> {
    slice
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(WEIGHTS_ANNOTATION))
        .and_then(|w| serde_json::from_str::<BTreeMap<String, serde_json::Value>>(w).ok())
        .map(|m| {
            m.into_iter()
                .filter_map(|(k, v)| Some((k, u32::try_from(v.as_u64()?).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The service's ports with their endpoints as seen from `node`. Headless
/// and ExternalName services have none.
pub fn service_ports(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeView,
) -> Vec<ServicePort> {
    let Some(spec) = svc.spec.as_ref() else {
        return vec![];
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return vec![];
    }
    let cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .filter(|l| !l.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|c| vec![c]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if cluster_ips.is_empty() {
        return vec![]; // headless ("None") or not allocated yet
    }
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    let ns = svc.metadata.namespace.as_deref().unwrap_or("default");
    let name = svc.metadata.name.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    for p in spec.ports.iter().flatten() {
        let (Some(protocol), Ok(port)) = (
            Protocol::parse(p.protocol.as_deref()),
            u16::try_from(p.port),
        ) else {
            continue;
        };
        let port_name = p.name.clone().unwrap_or_default();
        let candidates = candidates(slices, &port_name, protocol, node);
        let mut cluster_endpoints = Vec::new();
        let mut local_endpoints = Vec::new();
        // Selection is per family, as each family is proxied on its own.
        for v4 in [true, false] {
            let fam: Vec<&Candidate> = candidates
                .iter()
                .filter(|c| c.ep.addr.is_ipv4() == v4)
                .collect();
            let local = select_local(&fam);
            if internal_local {
                cluster_endpoints.extend(local.iter().cloned());
            } else {
                cluster_endpoints.extend(select_cluster(&fam, node));
            }
            local_endpoints.extend(local);
        }
        out.push(ServicePort {
            id: format!("{ns}/{name}/{}/{port_name}", protocol.nft()),
            protocol,
            port,
            cluster_ips: cluster_ips.clone(),
            node_port: p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n > 0),
            affinity_timeout,
            internal_local,
            external_local,
            cluster_endpoints,
            local_endpoints,
        });
    }
    out
}

fn candidates(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    node: &NodeView,
) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = Vec::new();
    for slice in slices {
        let Some(port) = slice.ports.iter().flatten().find(|sp| {
            sp.name.as_deref().unwrap_or_default() == port_name
                && Protocol::parse(sp.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(port) = port
            .port
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        let weights = weights(slice);
        for e in &slice.endpoints {
            // Kubernetes: a nil `ready` means ready; nil `serving` follows `ready`.
            let cond = e.conditions.clone().unwrap_or_default();
            let ready = cond.ready.unwrap_or(true);
            let hints = e.hints.as_ref();
            for a in &e.addresses {
                let Ok(addr) = a.parse::<IpAddr>() else {
                    continue;
                };
                if out.iter().any(|c| c.ep.addr == addr && c.ep.port == port) {
                    continue; // the same endpoint in two slices (mid-move)
                }
                out.push(Candidate {
                    ep: Endpoint {
                        addr,
                        port,
                        weight: weights.get(a).copied().unwrap_or(1),
                    },
                    ready,
                    serving: cond.serving.unwrap_or(ready),
                    terminating: cond.terminating.unwrap_or(false),
                    local: e.node_name.as_deref() == Some(node.name.as_str()),
                    for_nodes: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|l| l.iter().map(|n| n.name.clone()).collect()),
                    for_zones: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|l| l.iter().map(|z| z.name.clone()).collect()),
                });
            }
        }
    }
    out.sort_by(|a, b| a.ep.cmp(&b.ep));
    out
}

/// Ready endpoints narrowed by topology hints; with none ready, the serving
/// terminating ones (so connections drain to pods that are shutting down
/// rather than fail).
fn select_cluster(c: &[&Candidate], node: &NodeView) -> Vec<Endpoint> {
    let ready: Vec<&Candidate> = c.iter().copied().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return c
            .iter()
            .filter(|c| c.serving && c.terminating)
            .map(|c| c.ep.clone())
            .collect();
    }
    let has = |l: &Option<Vec<String>>| l.as_ref().is_some_and(|l| !l.is_empty());
    if ready.iter().all(|c| has(&c.for_nodes)) {
        let mine: Vec<Endpoint> = ready
            .iter()
            .filter(|c| c.for_nodes.iter().flatten().any(|n| *n == node.name))
            .map(|c| c.ep.clone())
            .collect();
        if !mine.is_empty() {
            return mine;
        }
    }
    if let Some(zone) = &node.zone {
        if ready.iter().all(|c| has(&c.for_zones)) {
            let mine: Vec<Endpoint> = ready
                .iter()
                .filter(|c| c.for_zones.iter().flatten().any(|z| z == zone))
                .map(|c| c.ep.clone())
                .collect();
            if !mine.is_empty() {
                return mine;
            }
        }
    }
    ready.iter().map(|c| c.ep.clone()).collect()
}

/// This node's ready endpoints, else its serving terminating ones.
fn select_local(c: &[&Candidate]) -> Vec<Endpoint> {
    let local: Vec<&&Candidate> = c.iter().filter(|c| c.local).collect();
    let ready: Vec<Endpoint> = local
        .iter()
        .filter(|c| c.ready)
        .map(|c| c.ep.clone())
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    local
        .iter()
        .filter(|c| c.serving && c.terminating)
        .map(|c| c.ep.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(extra: serde_json::Value) -> Service {
        let mut s = json!({
            "metadata": {"name": "web", "namespace": "ns1"},
            "spec": {
                "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:96::10"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
            }
        });
        json_patch::merge(&mut s, &extra);
        serde_json::from_value(s).unwrap()
    }

    fn slice(endpoints: serde_json::Value, annotations: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "ns1",
                         "labels": {SERVICE_NAME_LABEL: "web"}, "annotations": annotations},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints
        }))
        .unwrap()
    }

    fn ep(ip: &str, node: &str, ready: bool, terminating: bool) -> serde_json::Value {
        json!({"addresses": [ip], "nodeName": node,
               "conditions": {"ready": ready, "serving": ready || terminating, "terminating": terminating}})
    }

    fn node(name: &str, zone: &str) -> NodeView {
        NodeView {
            name: name.into(),
            zone: Some(zone.into()),
        }
    }

    fn addrs(eps: &[Endpoint]) -> Vec<String> {
        eps.iter().map(|e| e.addr.to_string()).collect()
    }

    #[test]
    fn ready_endpoints_with_ports_by_name_and_weights() {
        let s = slice(
            json!([
                ep("10.1.0.2", "n1", true, false),
                ep("10.1.0.3", "n2", true, false),
                ep("10.1.0.4", "n2", false, false)
            ]),
            json!({WEIGHTS_ANNOTATION: r#"{"10.1.0.2": 9, "10.1.0.3": 0}"#}),
        );
        let ports = service_ports(&svc(json!({})), &[&s], &node("n1", "a"));
        assert_eq!(ports.len(), 1);
        let p = &ports[0];
        assert_eq!(p.id, "ns1/web/tcp/http");
        assert_eq!(p.cluster_ips.len(), 2);
        assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.2", "10.1.0.3"]);
        assert_eq!(p.cluster_endpoints[0].port, 8080);
        assert_eq!(p.cluster_endpoints[0].weight, 9);
        assert_eq!(p.cluster_endpoints[1].weight, 0);
        assert_eq!(addrs(&p.local_endpoints), ["10.1.0.2"]);
        assert_eq!(p.affinity_timeout, None);
    }

    #[test]
    fn terminating_endpoints_only_when_none_is_ready() {
        let s = slice(
            json!([
                ep("10.1.0.2", "n1", false, true),
                ep("10.1.0.3", "n2", false, false)
            ]),
            json!({}),
        );
        let p = &service_ports(&svc(json!({})), &[&s], &node("n1", "a"))[0];
        assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.2"]);
        let s = slice(
            json!([
                ep("10.1.0.2", "n1", false, true),
                ep("10.1.0.3", "n2", true, false)
            ]),
            json!({}),
        );
        let p = &service_ports(&svc(json!({})), &[&s], &node("n1", "a"))[0];
        assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.3"]);
    }

    #[test]
    fn topology_hints_node_then_zone_then_all() {
        let mut a = ep("10.1.0.2", "n1", true, false);
        a["hints"] = json!({"forZones": [{"name": "a"}]});
        let mut b = ep("10.1.0.3", "n2", true, false);
        b["hints"] = json!({"forZones": [{"name": "b"}]});
        let s = slice(json!([a.clone(), b.clone()]), json!({}));
        let sv = svc(json!({}));
        assert_eq!(
            addrs(&service_ports(&sv, &[&s], &node("n9", "a"))[0].cluster_endpoints),
            ["10.1.0.2"]
        );
        assert_eq!(
            addrs(&service_ports(&sv, &[&s], &node("n9", "b"))[0].cluster_endpoints),
            ["10.1.0.3"]
        );
        // No endpoint hinted for this zone: all of them.
        assert_eq!(
            service_ports(&sv, &[&s], &node("n9", "c"))[0]
                .cluster_endpoints
                .len(),
            2
        );
        // One endpoint without hints: hints are ignored.
        let s2 = slice(
            json!([a.clone(), ep("10.1.0.4", "n3", true, false)]),
            json!({}),
        );
        assert_eq!(
            service_ports(&sv, &[&s2], &node("n9", "a"))[0]
                .cluster_endpoints
                .len(),
            2
        );
        // Node hints win over zone hints.
        a["hints"]["forNodes"] = json!([{"name": "n2"}]);
        b["hints"]["forNodes"] = json!([{"name": "n1"}]);
        let s3 = slice(json!([a, b]), json!({}));
        assert_eq!(
            addrs(&service_ports(&sv, &[&s3], &node("n1", "a"))[0].cluster_endpoints),
            ["10.1.0.3"]
        );
    }

    #[test]
    fn traffic_policies_affinity_and_nodeport() {
        let s = slice(
            json!([
                ep("10.1.0.2", "n1", true, false),
                ep("10.1.0.3", "n2", true, false)
            ]),
            json!({}),
        );
        let sv = svc(json!({"spec": {
            "type": "NodePort", "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
            "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}]
        }}));
        let p = &service_ports(&sv, &[&s], &node("n2", "a"))[0];
        assert_eq!(addrs(&p.cluster_endpoints), ["10.1.0.3"]);
        assert_eq!(addrs(&p.local_endpoints), ["10.1.0.3"]);
        assert_eq!(p.node_port, Some(30080));
        assert_eq!(p.affinity_timeout, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert!(p.internal_local && p.external_local);
        let sv = svc(json!({"spec": {"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}}));
        assert_eq!(
            service_ports(&sv, &[&s], &node("n2", "a"))[0].affinity_timeout,
            Some(60)
        );
    }

    #[test]
    fn headless_external_name_and_unknown_ports_have_no_rules() {
        assert!(service_ports(
            &svc(json!({"spec": {"clusterIP": "None", "clusterIPs": ["None"]}})),
            &[],
            &node("n", "a")
        )
        .is_empty());
        assert!(service_ports(
            &svc(json!({"spec": {"type": "ExternalName"}})),
            &[],
            &node("n", "a")
        )
        .is_empty());
        let s = slice(json!([ep("10.1.0.2", "n1", true, false)]), json!({}));
        let sv =
            svc(json!({"spec": {"ports": [{"name": "other", "port": 81, "protocol": "TCP"}]}}));
        assert!(service_ports(&sv, &[&s], &node("n", "a"))[0]
            .cluster_endpoints
            .is_empty());
    }
}
