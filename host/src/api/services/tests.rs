//! The semantic table of Service allocation, from Kubernetes' documented
//! behaviour (concepts/services-networking/dual-stack and the Service API).

use super::*;

const DUAL: &str = "10.43.0.0/16,fd43::/112";
const V4: &str = "10.43.0.0/16";

fn allocators(cidrs: &str) -> Allocators {
    Allocators::new(&ServiceConfig::parse(cidrs, "30000-32767").unwrap())
}

fn owner(name: &str) -> Owner {
    Owner {
        key: format!("/core/services/default/{name}"),
        uid: format!("uid-{name}"),
    }
}

fn svc(name: &str, spec: Value) -> Value {
    let mut spec = spec;
    if spec.get("ports").is_none() {
        spec["ports"] = json!([{"port": 80, "protocol": "TCP"}]);
    }
    json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}, "spec": spec})
}

/// Create: returns the allocated object.
fn create(a: &mut Allocators, name: &str, spec: Value) -> Result<Value, Failure> {
    let mut obj = svc(name, spec);
    a.allocate(None, &mut obj, &owner(name))?;
    Ok(obj)
}

/// Update `old` to `new_spec` the way the API does: prepare, validate, allocate.
fn update(a: &mut Allocators, old: &Value, new_spec: Value) -> Result<(Value, Plan), Failure> {
    let name = meta_str(old, "name").unwrap().to_string();
    let mut new = svc(&name, new_spec);
    let info = services_info();
    prepare_update(info, None, old, &mut new);
    let causes = validate_update(old, &new);
    if !causes.is_empty() {
        return Err(Failure::Invalid(causes));
    }
    let plan = a.allocate(Some(old), &mut new, &owner(&name))?;
    Ok((new, plan))
}

fn fields(f: Failure) -> Vec<(String, String)> {
    match f {
        Failure::Invalid(c) => c.into_iter().map(|c| (c.field, c.message)).collect(),
        Failure::Held(h) => vec![(h.cause.field, h.cause.message)],
        Failure::Full(m) => vec![("<full>".into(), m)],
    }
}

fn spec_strs(v: &Value, k: &str) -> Vec<String> {
    strs(v["spec"].get(k))
}

fn ip_in(v: &Value, i: usize, cidr: &str) -> bool {
    let ip: IpAddr = spec_strs(v, "clusterIPs")[i].parse().unwrap();
    Cidr::parse(cidr).unwrap().contains(ip)
}

#[test]
fn default_is_single_stack_primary_family() {
    let mut a = allocators(DUAL);
    let s = create(&mut a, "a", json!({})).unwrap();
    assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv4"]);
    assert_eq!(spec_strs(&s, "clusterIPs").len(), 1);
    assert!(ip_in(&s, 0, "10.43.0.0/16"));
    assert_eq!(s["spec"]["clusterIP"], s["spec"]["clusterIPs"][0]);
}

#[test]
fn ipv6_primary_cluster_defaults_to_ipv6() {
    let mut a = allocators("fd43::/112,10.43.0.0/16");
    let s = create(&mut a, "a", json!({})).unwrap();
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv6"]);
    assert!(ip_in(&s, 0, "fd43::/112"));
}

#[test]
fn prefer_dual_stack_on_dual_stack_cluster_gets_both() {
    let mut a = allocators(DUAL);
    let s = create(&mut a, "a", json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap();
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv4", "IPv6"]);
    assert!(ip_in(&s, 0, "10.43.0.0/16"));
    assert!(ip_in(&s, 1, "fd43::/112"));
}

#[test]
fn prefer_dual_stack_on_single_stack_cluster_gets_one() {
    let mut a = allocators(V4);
    let s = create(&mut a, "a", json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap();
    assert_eq!(s["spec"]["ipFamilyPolicy"], "PreferDualStack");
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv4"]);
    assert_eq!(spec_strs(&s, "clusterIPs").len(), 1);
}

#[test]
fn require_dual_stack_gets_both_in_requested_order() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv6", "IPv4"]}),
    )
    .unwrap();
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv6", "IPv4"]);
    assert!(ip_in(&s, 0, "fd43::/112"));
    assert!(ip_in(&s, 1, "10.43.0.0/16"));
}

#[test]
fn require_dual_stack_on_single_stack_cluster_is_invalid() {
    let mut a = allocators(V4);
    let e = create(&mut a, "a", json!({"ipFamilyPolicy": "RequireDualStack"})).unwrap_err();
    let f = fields(e);
    assert_eq!(f[0].0, "spec.ipFamilyPolicy");
    assert!(f[0].1.contains("not configured for dual-stack"), "{f:?}");
    assert_eq!(a.used(Family::V4).0, 0, "nothing stays reserved");
}

#[test]
fn single_family_request_for_the_secondary_family() {
    let mut a = allocators(DUAL);
    let s = create(&mut a, "a", json!({"ipFamilies": ["IPv6"]})).unwrap();
    assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
    assert!(ip_in(&s, 0, "fd43::/112"));
}

#[test]
fn family_not_configured_is_invalid() {
    let mut a = allocators(V4);
    let e = create(&mut a, "a", json!({"ipFamilies": ["IPv6"]})).unwrap_err();
    assert_eq!(fields(e)[0].0, "spec.ipFamilies[0]");
}

#[test]
fn two_families_without_policy_is_invalid() {
    // ipFamilyPolicy defaults to SingleStack, which may not list two families.
    let mut a = allocators(DUAL);
    let e = create(&mut a, "a", json!({"ipFamilies": ["IPv4", "IPv6"]})).unwrap_err();
    let f = fields(e);
    assert_eq!(f[0].0, "spec.ipFamilyPolicy");
    assert!(f[0].1.contains("multiple IP families"), "{f:?}");
}

#[test]
fn requested_cluster_ip_is_honoured_and_family_inferred() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"clusterIP": "fd43::99", "clusterIPs": ["fd43::99"]}),
    )
    .unwrap();
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv6"]);
    assert_eq!(s["spec"]["clusterIP"], "fd43::99");
    assert_eq!(
        a.holder(Item::Ip("fd43::99".parse().unwrap())),
        Some(owner("a"))
    );
}

#[test]
fn requested_dual_stack_ips_are_honoured() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"ipFamilyPolicy": "RequireDualStack", "clusterIP": "10.43.1.1", "clusterIPs": ["10.43.1.1", "fd43::101"]}),
    )
    .unwrap();
    assert_eq!(spec_strs(&s, "clusterIPs"), ["10.43.1.1", "fd43::101"]);
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv4", "IPv6"]);
}

#[test]
fn taken_cluster_ip_is_refused_and_released_ip_is_reusable() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"]}),
    )
    .unwrap();
    let e = create(
        &mut a,
        "b",
        json!({"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"]}),
    )
    .unwrap_err();
    let Failure::Held(h) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(h.holder, owner("a"));
    let f = fields(e);
    assert_eq!(f[0].0, "spec.clusterIPs");
    assert_eq!(
        f[0].1,
        "Invalid value: []string{\"10.43.0.10\"}: failed to allocate IP 10.43.0.10: provided IP is already allocated"
    );
    for item in items_of(&s) {
        assert!(a.release(item, "uid-a"));
    }
    create(
        &mut a,
        "b",
        json!({"clusterIP": "10.43.0.10", "clusterIPs": ["10.43.0.10"]}),
    )
    .unwrap();
}

#[test]
fn cluster_ip_out_of_range_is_invalid() {
    let mut a = allocators(DUAL);
    let e = create(
        &mut a,
        "a",
        json!({"clusterIP": "10.99.0.1", "clusterIPs": ["10.99.0.1"]}),
    )
    .unwrap_err();
    let f = fields(e);
    assert_eq!(f[0].0, "spec.clusterIPs");
    assert!(
        f[0].1
            .contains("not in the valid range. The range of valid IPs is 10.43.0.0/16"),
        "{f:?}"
    );
    // The network and broadcast addresses are never handed out.
    for ip in ["10.43.0.0", "10.43.255.255"] {
        let e = create(&mut a, "b", json!({"clusterIP": ip, "clusterIPs": [ip]})).unwrap_err();
        assert!(fields(e)[0].1.contains("not in the valid range"));
    }
}

#[test]
fn malformed_cluster_ips_are_invalid() {
    let mut a = allocators(DUAL);
    let e = create(
        &mut a,
        "a",
        json!({"clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.6"]}),
    )
    .unwrap_err();
    assert!(fields(e)[0]
        .1
        .contains("first value must match `clusterIP`"));
    let e = create(
        &mut a,
        "a",
        json!({"ipFamilyPolicy": "PreferDualStack", "clusterIP": "10.43.0.5", "clusterIPs": ["10.43.0.5", "10.43.0.6"]}),
    )
    .unwrap_err();
    assert!(fields(e)[0]
        .1
        .contains("no more than one IP for each IP family"));
    let e = create(
        &mut a,
        "a",
        json!({"clusterIP": "nope", "clusterIPs": ["nope"]}),
    )
    .unwrap_err();
    assert_eq!(fields(e)[0].0, "spec.clusterIP");
}

#[test]
fn headless_with_selector_is_single_stack() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "x"}}),
    )
    .unwrap();
    assert_eq!(spec_strs(&s, "clusterIPs"), ["None"]);
    assert_eq!(s["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv4"]);
    assert_eq!(a.used(Family::V4).0, 0);
}

#[test]
fn headless_without_selector_requires_dual_stack_even_on_single_stack() {
    for cidrs in [DUAL, V4] {
        let mut a = allocators(cidrs);
        let s = create(
            &mut a,
            "a",
            json!({"clusterIP": "None", "clusterIPs": ["None"]}),
        )
        .unwrap();
        assert_eq!(s["spec"]["ipFamilyPolicy"], "RequireDualStack", "{cidrs}");
        assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv4", "IPv6"], "{cidrs}");
        assert_eq!(spec_strs(&s, "clusterIPs"), ["None"]);
    }
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "b",
        json!({"clusterIP": "None", "clusterIPs": ["None"], "ipFamilyPolicy": "SingleStack"}),
    )
    .unwrap();
    assert_eq!(spec_strs(&s, "ipFamilies"), ["IPv4"]);
}

#[test]
fn external_name_gets_nothing_and_may_not_ask() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"type": "ExternalName", "externalName": "example.com"}),
    )
    .unwrap();
    assert!(s["spec"].get("clusterIP").is_none());
    assert!(s["spec"].get("ipFamilies").is_none());
    assert!(s["spec"].get("ipFamilyPolicy").is_none());
    let e = create(
        &mut a,
        "b",
        json!({"type": "ExternalName", "externalName": "example.com", "ipFamilyPolicy": "SingleStack"}),
    )
    .unwrap_err();
    assert_eq!(fields(e)[0].0, "spec.ipFamilyPolicy");
}

#[test]
fn node_port_allocates_in_range_and_shares_by_port_number() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"type": "NodePort", "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
            {"name": "web", "port": 80, "protocol": "TCP"}]}),
    )
    .unwrap();
    let np: Vec<i64> = (0..3)
        .map(|i| s["spec"]["ports"][i]["nodePort"].as_i64().unwrap())
        .collect();
    assert!(np.iter().all(|p| (30000..=32767).contains(p)), "{np:?}");
    assert_eq!(np[0], np[1]);
    assert_ne!(np[0], np[2]);
    assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
    assert_eq!(a.used(Family::V4).1, 2);
}

#[test]
fn requested_node_port_is_honoured_and_taken_one_refused() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
    )
    .unwrap();
    assert_eq!(s["spec"]["ports"][0]["nodePort"], 30080);
    let e = create(
        &mut a,
        "b",
        json!({"type": "NodePort", "ports": [{"port": 81, "protocol": "UDP", "nodePort": 30080}]}),
    )
    .unwrap_err();
    let f = fields(e);
    assert_eq!(f[0].0, "spec.ports[0].nodePort");
    assert_eq!(
        f[0].1,
        "Invalid value: 30080: provided port is already allocated"
    );
    let e = create(
        &mut a,
        "c",
        json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 80}]}),
    )
    .unwrap_err();
    assert!(fields(e)[0]
        .1
        .contains("not in the valid range. The range of valid ports is 30000-32767"));
    assert_eq!(a.used(Family::V4), (1, 1), "failed creates keep nothing");
}

#[test]
fn cluster_ip_type_may_not_name_a_node_port() {
    let mut a = allocators(DUAL);
    let e = create(
        &mut a,
        "a",
        json!({"ports": [{"port": 80, "protocol": "TCP", "nodePort": 30001}]}),
    )
    .unwrap_err();
    assert_eq!(fields(e)[0].0, "spec.ports[0].nodePort");
    let e = create(
        &mut a,
        "b",
        json!({"type": "NodePort", "clusterIP": "None", "clusterIPs": ["None"]}),
    )
    .unwrap_err();
    assert_eq!(fields(e)[0].0, "spec.clusterIP");
}

#[test]
fn load_balancer_node_ports_and_health_check_port() {
    let mut a = allocators(DUAL);
    let s = create(
        &mut a,
        "a",
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local"}),
    )
    .unwrap();
    assert!(s["spec"]["ports"][0]["nodePort"].as_i64().is_some());
    assert!(s["spec"]["healthCheckNodePort"].as_i64().is_some());
    assert_eq!(s["spec"]["allocateLoadBalancerNodePorts"], true);
    let s = create(
        &mut a,
        "b",
        json!({"type": "LoadBalancer", "allocateLoadBalancerNodePorts": false}),
    )
    .unwrap();
    assert!(s["spec"]["ports"][0].get("nodePort").is_none());
}

#[test]
fn upgrade_single_to_prefer_dual_adds_secondary() {
    let mut a = allocators(DUAL);
    let old = create(&mut a, "a", json!({})).unwrap();
    let first = spec_strs(&old, "clusterIPs")[0].clone();
    let (new, plan) = update(&mut a, &old, json!({"ipFamilyPolicy": "PreferDualStack"})).unwrap();
    assert_eq!(spec_strs(&new, "ipFamilies"), ["IPv4", "IPv6"]);
    assert_eq!(spec_strs(&new, "clusterIPs")[0], first);
    assert!(ip_in(&new, 1, "fd43::/112"));
    assert_eq!(plan.reserved.len(), 1);
    assert!(plan.release.is_empty());
}

#[test]
fn downgrade_to_single_stack_releases_secondary() {
    let mut a = allocators(DUAL);
    let old = create(&mut a, "a", json!({"ipFamilyPolicy": "RequireDualStack"})).unwrap();
    let ips = spec_strs(&old, "clusterIPs");
    let mut spec = old["spec"].clone();
    spec["ipFamilyPolicy"] = json!("SingleStack");
    let (new, plan) = update(&mut a, &old, spec).unwrap();
    assert_eq!(spec_strs(&new, "clusterIPs"), [ips[0].clone()]);
    assert_eq!(spec_strs(&new, "ipFamilies"), ["IPv4"]);
    assert_eq!(plan.release, vec![Item::Ip(ips[1].parse().unwrap())]);
    // Removing the secondary without SingleStack is refused.
    let mut spec = old["spec"].clone();
    spec["clusterIPs"] = json!([ips[0]]);
    let e = update(&mut a, &old, spec).unwrap_err();
    assert!(fields(e).iter().any(|(f, _)| f == "spec.ipFamilyPolicy"));
}

#[test]
fn prefer_dual_stack_is_not_upgraded_by_an_unrelated_update() {
    // Created on a single-stack cluster; the cluster became dual-stack.
    let mut single = allocators(V4);
    let old = create(
        &mut single,
        "a",
        json!({"ipFamilyPolicy": "PreferDualStack"}),
    )
    .unwrap();
    let mut a = allocators(DUAL);
    a.load([(owner("a"), &old)]);
    let mut spec = old["spec"].clone();
    spec["selector"] = json!({"app": "new"});
    let (new, plan) = update(&mut a, &old, spec).unwrap();
    assert_eq!(spec_strs(&new, "clusterIPs").len(), 1);
    assert!(plan.reserved.is_empty());
}

#[test]
fn resubmitting_without_allocated_values_keeps_them() {
    let mut a = allocators(DUAL);
    let old = create(
        &mut a,
        "a",
        json!({"type": "NodePort", "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}),
    )
    .unwrap();
    let (new, plan) = update(
        &mut a,
        &old,
        json!({"type": "NodePort", "ports": [{"name": "web", "port": 80, "protocol": "TCP"}]}),
    )
    .unwrap();
    assert_eq!(new["spec"]["clusterIPs"], old["spec"]["clusterIPs"]);
    assert_eq!(
        new["spec"]["ports"][0]["nodePort"],
        old["spec"]["ports"][0]["nodePort"]
    );
    assert_eq!(plan, Plan::default());
}

#[test]
fn cluster_ip_is_immutable() {
    let mut a = allocators(DUAL);
    let old = create(&mut a, "a", json!({})).unwrap();
    let e = update(
        &mut a,
        &old,
        json!({"clusterIP": "10.43.9.9", "clusterIPs": ["10.43.9.9"]}),
    )
    .unwrap_err();
    assert!(fields(e)
        .iter()
        .any(|(f, m)| f == "spec.clusterIP" && m.contains("immutable")));
}

#[test]
fn node_port_to_cluster_ip_releases_node_ports() {
    let mut a = allocators(DUAL);
    let old = create(
        &mut a,
        "a",
        json!({"type": "NodePort", "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30123}]}),
    )
    .unwrap();
    let mut spec = old["spec"].clone();
    spec["type"] = json!("ClusterIP");
    let (new, plan) = update(&mut a, &old, spec).unwrap();
    assert!(new["spec"]["ports"][0].get("nodePort").is_none());
    assert!(new["spec"].get("externalTrafficPolicy").is_none());
    assert_eq!(plan.release, vec![Item::NodePort(30123)]);
    assert_eq!(new["spec"]["clusterIP"], old["spec"]["clusterIP"]);
}

#[test]
fn cluster_ip_to_node_port_allocates_node_ports() {
    let mut a = allocators(DUAL);
    let old = create(&mut a, "a", json!({})).unwrap();
    let mut spec = old["spec"].clone();
    spec["type"] = json!("NodePort");
    let (new, plan) = update(&mut a, &old, spec).unwrap();
    assert!(new["spec"]["ports"][0]["nodePort"].as_i64().is_some());
    assert_eq!(plan.reserved.len(), 1);
}

#[test]
fn to_and_from_external_name() {
    let mut a = allocators(DUAL);
    let old = create(&mut a, "a", json!({})).unwrap();
    let ip = spec_strs(&old, "clusterIPs")[0].clone();
    let mut spec = old["spec"].clone();
    spec["type"] = json!("ExternalName");
    spec["externalName"] = json!("example.com");
    let (ext, plan) = update(&mut a, &old, spec).unwrap();
    assert!(ext["spec"].get("clusterIP").is_none());
    assert!(ext["spec"].get("ipFamilies").is_none());
    assert_eq!(plan.release, vec![Item::Ip(ip.parse().unwrap())]);
    let (back, plan) = update(&mut a, &ext, json!({"type": "ClusterIP"})).unwrap();
    assert!(ip_in(&back, 0, "10.43.0.0/16"));
    assert_eq!(plan.reserved.len(), 1);
}

#[test]
fn load_rebuilds_and_keeps_pending() {
    let mut a = allocators(DUAL);
    let s = create(&mut a, "a", json!({"type": "NodePort"})).unwrap();
    let b = create(&mut a, "b", json!({})).unwrap();
    a.pending.insert(7, (owner("b"), items_of(&b)));
    // Only "a" is in the store.
    a.load([(owner("a"), &s)]);
    for item in items_of(&s) {
        assert_eq!(a.holder(item), Some(owner("a")));
    }
    for item in items_of(&b) {
        assert_eq!(
            a.holder(item),
            Some(owner("b")),
            "in-flight reservations survive"
        );
    }
    // A release by someone who does not hold the item changes nothing.
    let item = items_of(&s)[0];
    assert!(!a.release(item, "uid-b"));
    assert_eq!(a.holder(item), Some(owner("a")));
}

#[test]
fn small_range_fills_up_and_reports_full() {
    let mut a = Allocators::new(&ServiceConfig::parse("10.0.0.0/29", "30000-30001").unwrap());
    for i in 0..6 {
        create(&mut a, &format!("s{i}"), json!({})).unwrap();
    }
    let e = create(&mut a, "s6", json!({})).unwrap_err();
    assert!(matches!(e, Failure::Full(_)), "{e:?}");
    let mut seen = BTreeSet::new();
    for i in 0..6 {
        let ip = a.ips[0].ip(i);
        seen.insert(ip);
        assert!(a.holder(Item::Ip(ip)).is_some());
    }
    assert_eq!(seen.len(), 6);
}

#[test]
fn dynamic_allocation_avoids_the_low_band() {
    let mut a = allocators(DUAL);
    for i in 0..50 {
        let s = create(&mut a, &format!("s{i}"), json!({"type": "NodePort"})).unwrap();
        let ip: IpAddr = spec_strs(&s, "clusterIPs")[0].parse().unwrap();
        // /16: the first 256 addresses are kept for requests.
        assert!(
            to_u128(ip) - to_u128("10.43.0.0".parse().unwrap()) > 256,
            "{ip}"
        );
        let np = s["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
        assert!(np >= 30000 + 85, "{np}");
    }
}

#[test]
fn config_parsing() {
    let c = ServiceConfig::default();
    assert_eq!(c.primary_family(), Family::V4);
    assert_eq!(c.first_ip(), "10.43.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(
        c.node_ports,
        PortRange {
            first: 30000,
            last: 32767
        }
    );
    assert_eq!(
        ServiceConfig::parse("fd43::/112", "30000+99")
            .unwrap()
            .first_ip()
            .to_string(),
        "fd43::1"
    );
    assert_eq!(
        ServiceConfig::parse("10.43.7.9/16", "1-2").unwrap().cidrs[0].to_string(),
        "10.43.0.0/16"
    );
    for (cidrs, ports, want) in [
        (
            "10.43.0.0/16,10.44.0.0/16",
            "30000-32767",
            "different IP families",
        ),
        (
            "10.43.0.0/16,fd43::/112,fd44::/112",
            "30000-32767",
            "at most two",
        ),
        ("10.43.0.0", "30000-32767", "not a CIDR"),
        ("10.43.0.0/33", "30000-32767", "prefix length"),
        ("10.0.0.0/8", "30000-32767", "too large"),
        ("fd43::/64", "30000-32767", "too large"),
        ("10.0.0.0/31", "30000-32767", "too small"),
        ("", "30000-32767", "at least one"),
        ("10.43.0.0/16", "32767-30000", "larger than the last"),
        ("10.43.0.0/16", "0-10", "not a port number"),
        ("10.43.0.0/16", "65000+1000", "past port 65535"),
    ] {
        let e = ServiceConfig::parse(cidrs, ports).unwrap_err();
        assert!(e.contains(want), "{cidrs} {ports}: {e}");
    }
}

// ---- Through the API code path, with a real store --------------------------

async fn state_with(cidrs: &str, ports: &str) -> (Arc<AppState>, tempfile::TempDir) {
    use crate::store::embedded::{EmbeddedOptions, EmbeddedStore};
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(
        &dir.path().join("db.redb"),
        EmbeddedOptions::default(),
        None,
    )
    .unwrap();
    let config = crate::api::ApiConfig {
        services: ServiceConfig::parse(cidrs, ports).unwrap(),
        ..Default::default()
    };
    let state = Arc::new(AppState {
        store: Arc::new(store),
        metrics: Arc::new(crate::metrics::Metrics::new()),
        config,
        hooks: Default::default(),
    });
    let ns = resources::lookup("", "v1", "namespaces").unwrap();
    super::super::client::LocalClient::new(state.clone())
        .create(
            ns,
            None,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        )
        .await
        .unwrap();
    (state, dir)
}

fn manifest(name: &str, spec: Value) -> Value {
    let mut v = svc(name, spec);
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Service");
    v["metadata"].as_object_mut().unwrap().remove("uid");
    v
}

async fn api_create(state: &AppState, name: &str, spec: Value) -> ApiResult<Value> {
    super::super::handlers::create_object(
        state,
        "",
        "services",
        Some("default"),
        manifest(name, spec),
    )
    .await
}

#[tokio::test]
async fn concurrent_creates_never_share_and_failures_free() {
    // 14 usable addresses, 4 node ports; 24 concurrent requests.
    let (state, _dir) = state_with("10.9.0.0/28", "30000-30003").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let st = state.clone();
        tasks.push(tokio::spawn(async move {
            api_create(&st, &format!("s{i}"), json!({"type": "NodePort"})).await
        }));
    }
    let mut made = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(v) => made.push(v),
            Err(e) => {
                refused += 1;
                assert!(
                    e.status()["message"]
                        .as_str()
                        .unwrap()
                        .contains("range is full"),
                    "{:?}",
                    e.status()
                );
            }
        }
    }
    // Only the node ports limit: exactly 4 succeed, none share anything.
    assert_eq!(made.len(), 4);
    assert_eq!(refused, 20);
    let mut seen = BTreeSet::new();
    for v in &made {
        for item in items_of(v) {
            assert!(seen.insert(item), "{item:?} twice");
        }
    }
    // The refused creates left nothing behind: ClusterIP Services fill the
    // remaining 14 - 4 = 10 addresses exactly.
    for i in 0..10 {
        api_create(&state, &format!("c{i}"), json!({}))
            .await
            .unwrap();
    }
    assert!(api_create(&state, "c10", json!({})).await.is_err());
}

#[tokio::test]
async fn delete_frees_and_stale_cache_is_rebuilt_from_the_store() {
    let (state, _dir) = state_with(DUAL, "30000-32767").await;
    let spec = json!({"clusterIP": "10.43.0.77", "clusterIPs": ["10.43.0.77"]});
    api_create(&state, "a", spec.clone()).await.unwrap();
    let e = api_create(&state, "b", spec.clone()).await.unwrap_err();
    assert_eq!(e.code(), http::StatusCode::UNPROCESSABLE_ENTITY);
    // Deleting through the API frees at once.
    let t = Target {
        info: services_info(),
        namespace: Some("default".into()),
        name: Some("a".into()),
        sub: None,
    };
    super::super::handlers::delete(&state, &t, &json!({}), &Default::default())
        .await
        .unwrap();
    api_create(&state, "b", spec.clone()).await.unwrap();
    // Removed behind the allocator's back (a raw store delete): the cache is
    // stale, the holder no longer has it in the store, so it is rebuilt.
    let key = services_info().key(Some("default"), "b");
    let kv = state.store.get(&key).unwrap().unwrap();
    state
        .store
        .txn(vec![crate::store::Op::Delete {
            key,
            precondition: crate::store::Precondition::ModRevision(kv.mod_revision),
        }])
        .await
        .unwrap();
    api_create(&state, "c", spec.clone()).await.unwrap();
    // A dry run allocates in the answer but keeps nothing.
    let q: super::super::handlers::Query = [("dryRun".to_string(), "All".to_string())]
        .into_iter()
        .collect();
    let t = Target {
        info: services_info(),
        namespace: Some("default".into()),
        name: None,
        sub: None,
    };
    let dry = super::super::handlers::create(
        &state,
        &t,
        manifest(
            "d",
            json!({"clusterIP": "10.43.0.78", "clusterIPs": ["10.43.0.78"]}),
        ),
        &q,
    )
    .await
    .unwrap();
    assert_eq!(dry["spec"]["clusterIP"], "10.43.0.78");
    api_create(
        &state,
        "d",
        json!({"clusterIP": "10.43.0.78", "clusterIPs": ["10.43.0.78"]}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn kubernetes_service_bootstrap_is_idempotent() {
    let (state, _dir) = state_with(DUAL, "30000-32767").await;
    let api: SocketAddr = "127.0.0.1:6443".parse().unwrap();
    bootstrap_kubernetes(&state, api).await.unwrap();
    let kv = state
        .store
        .get(&services_info().key(Some("default"), "kubernetes"))
        .unwrap()
        .unwrap();
    let svc: Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(svc["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 6443);
    // A restart on another port updates the port and the slice, nothing else.
    let api2: SocketAddr = "127.0.0.1:7443".parse().unwrap();
    bootstrap_kubernetes(&state, api2).await.unwrap();
    let kv2 = state
        .store
        .get(&services_info().key(Some("default"), "kubernetes"))
        .unwrap()
        .unwrap();
    let svc2: Value = serde_json::from_slice(&kv2.value).unwrap();
    assert_eq!(svc2["metadata"]["uid"], svc["metadata"]["uid"]);
    assert_eq!(svc2["spec"]["clusterIP"], "10.43.0.1");
    assert_eq!(svc2["spec"]["ports"][0]["targetPort"], 7443);
    let slice_info = resources::lookup("discovery.k8s.io", "v1", "endpointslices").unwrap();
    let kv = state
        .store
        .get(&slice_info.key(Some("default"), "kubernetes"))
        .unwrap()
        .unwrap();
    let slice: Value = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(slice["ports"][0]["port"], 7443);
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["addressType"], "IPv4");
    // Unchanged inputs write nothing.
    let rev = kv.mod_revision;
    bootstrap_kubernetes(&state, api2).await.unwrap();
    let kv = state
        .store
        .get(&slice_info.key(Some("default"), "kubernetes"))
        .unwrap()
        .unwrap();
    assert_eq!(kv.mod_revision, rev);
}
