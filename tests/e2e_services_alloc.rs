//! Service cluster-IP and node-port allocation through the real kubectl:
//! single-stack, PreferDualStack, RequireDualStack, headless and NodePort
//! Services get Kubernetes' fields; taken addresses and ports are refused
//! with 422; deleting frees them; a killed and restarted server keeps every
//! allocation and never hands one out twice; the `kubernetes` Service and
//! its EndpointSlice exist.

mod common;

use common::{free_port, Server};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use common::kubectl::have_kubectl;

fn ok(s: &Server, args: &[&str]) -> String {
    common::kubectl::ok(&s.kubeconfig, args).0
}

/// kubectl must fail; returns its stderr.
fn fails(s: &Server, args: &[&str]) -> String {
    common::kubectl::fails(&s.kubeconfig, args)
}

/// `kubectl apply -f -`: (success, stderr).
fn apply(s: &Server, manifest: &str) -> (bool, String) {
    let (good, _, err) = common::kubectl::apply(&s.kubeconfig, manifest);
    (good, err)
}

fn applied(s: &Server, manifest: &str) {
    let (good, err) = apply(s, manifest);
    assert!(good, "apply failed: {err}\n{manifest}");
}

/// `kubectl get svc NAME -o jsonpath=...`
fn jp(s: &Server, name: &str, path: &str) -> String {
    ok(s, &["get", "svc", name, "-o", &format!("jsonpath={path}")])
}

/// clusterIPs, ipFamilies and ipFamilyPolicy of a Service.
fn ip_fields(s: &Server, name: &str) -> (Vec<String>, Vec<String>, String) {
    let out = jp(
        s,
        name,
        "{.spec.clusterIPs}|{.spec.ipFamilies}|{.spec.ipFamilyPolicy}",
    );
    let parts: Vec<&str> = out.split('|').collect();
    let list = |x: &str| -> Vec<String> { serde_json::from_str(x).unwrap_or_default() };
    (list(parts[0]), list(parts[1]), parts[2].to_string())
}

fn in_cidr(ip: &str, net: &str, prefix: u32) -> bool {
    let ip: IpAddr = ip.parse().unwrap();
    let net: IpAddr = net.parse().unwrap();
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            (u32::from(a) >> (32 - prefix)) == (u32::from(n) >> (32 - prefix))
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            (u128::from(a) >> (128 - prefix)) == (u128::from(n) >> (128 - prefix))
        }
        _ => false,
    }
}

fn svc_manifest(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{spec}\n  ports:\n  - name: web\n    port: 80\n    targetPort: 8080\n"
    )
}

type Allocation = (String, Vec<String>, Vec<i64>);

/// Every allocated cluster IP and node port, per Service.
fn allocations(s: &Server) -> Vec<Allocation> {
    let out = ok(s, &["get", "svc", "-A", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut all = Vec::new();
    for item in v["items"].as_array().unwrap() {
        let name = format!(
            "{}/{}",
            item["metadata"]["namespace"].as_str().unwrap(),
            item["metadata"]["name"].as_str().unwrap()
        );
        let ips: Vec<String> = item["spec"]["clusterIPs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .filter(|x| *x != "None")
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let ports: Vec<i64> = item["spec"]["ports"]
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["nodePort"].as_i64()).collect())
            .unwrap_or_default();
        all.push((name, ips, ports));
    }
    all.sort();
    all
}

fn assert_unique(all: &[Allocation]) {
    let mut ips = BTreeSet::new();
    let mut ports = BTreeSet::new();
    for (name, i, p) in all {
        for ip in i {
            assert!(
                ips.insert(ip.clone()),
                "{ip} allocated twice (again to {name})"
            );
        }
        for np in p.iter().collect::<BTreeSet<_>>() {
            assert!(
                ports.insert(*np),
                "nodePort {np} allocated twice (again to {name})"
            );
        }
    }
}

#[test]
fn dual_stack_allocation_through_kubectl_survives_restart() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let s = Server::start_on(dir.path(), port, &[]);

    // The kubernetes Service: first address of the primary range, 443 -> API port.
    assert_eq!(jp(&s, "kubernetes", "{.spec.clusterIP}"), "10.43.0.1");
    assert_eq!(
        jp(
            &s,
            "kubernetes",
            "{.spec.ports[0].name} {.spec.ports[0].port} {.spec.ports[0].targetPort}"
        ),
        format!("https 443 {port}")
    );
    assert_eq!(jp(&s, "kubernetes", "{.spec.selector}"), "");
    let slice = ok(&s, &["get", "endpointslice", "kubernetes", "-o", "json"]);
    let slice: serde_json::Value = serde_json::from_str(&slice).unwrap();
    assert_eq!(slice["addressType"], "IPv4");
    assert_eq!(slice["endpoints"][0]["addresses"][0], "127.0.0.1");
    assert_eq!(slice["ports"][0]["port"], port);
    assert_eq!(
        slice["metadata"]["labels"]["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(
        slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "shoal-apiserver"
    );

    // Single-stack by default, from the primary (IPv4) range.
    ok(
        &s,
        &["create", "service", "clusterip", "single", "--tcp=80:8080"],
    );
    let (ips, fams, policy) = ip_fields(&s, "single");
    assert_eq!(fams, ["IPv4"]);
    assert_eq!(policy, "SingleStack");
    assert_eq!(ips.len(), 1);
    assert!(in_cidr(&ips[0], "10.43.0.0", 16), "{ips:?}");
    assert_eq!(jp(&s, "single", "{.spec.clusterIP}"), ips[0]);

    // PreferDualStack on a dual-stack cluster: both families, primary first.
    let prefer = |app: &str| {
        svc_manifest(
            "prefer",
            &format!("  ipFamilyPolicy: PreferDualStack\n  selector: {{app: {app}}}"),
        )
    };
    applied(&s, &prefer("web"));
    let (ips, fams, policy) = ip_fields(&s, "prefer");
    assert_eq!(fams, ["IPv4", "IPv6"]);
    assert_eq!(policy, "PreferDualStack");
    assert!(
        in_cidr(&ips[0], "10.43.0.0", 16) && in_cidr(&ips[1], "fd43::", 112),
        "{ips:?}"
    );
    // Re-applying the manifest (which has no clusterIP) keeps the addresses.
    applied(&s, &prefer("web2"));
    assert_eq!(ip_fields(&s, "prefer").0, ips);

    // RequireDualStack, in the order asked for.
    applied(
        &s,
        &svc_manifest(
            "require",
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  selector: {app: web}",
        ),
    );
    let (ips, fams, _) = ip_fields(&s, "require");
    assert_eq!(fams, ["IPv6", "IPv4"]);
    assert!(
        in_cidr(&ips[0], "fd43::", 112) && in_cidr(&ips[1], "10.43.0.0", 16),
        "{ips:?}"
    );

    // Headless: with a selector single-stack, without one RequireDualStack.
    ok(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "headless",
            "--clusterip=None",
        ],
    );
    assert_eq!(
        ip_fields(&s, "headless"),
        (
            vec!["None".into()],
            vec!["IPv4".into()],
            "SingleStack".into()
        )
    );
    applied(
        &s,
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: bare\nspec:\n  clusterIP: None\n",
    );
    assert_eq!(
        ip_fields(&s, "bare"),
        (
            vec!["None".into()],
            vec!["IPv4".into(), "IPv6".into()],
            "RequireDualStack".into()
        )
    );

    // ExternalName gets no address.
    ok(
        &s,
        &[
            "create",
            "service",
            "externalname",
            "ext",
            "--external-name",
            "example.com",
        ],
    );
    assert_eq!(jp(&s, "ext", "{.spec.clusterIP}{.spec.ipFamilies}"), "");

    // A requested address is honoured; a taken one is refused, naming the field.
    ok(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "fixed",
            "--tcp=80:8080",
            "--clusterip=10.43.0.50",
        ],
    );
    assert_eq!(jp(&s, "fixed", "{.spec.clusterIP}"), "10.43.0.50");
    let err = fails(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "fixed2",
            "--tcp=80:8080",
            "--clusterip=10.43.0.50",
        ],
    );
    assert!(
        err.contains("Service \"fixed2\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.43.0.50\"}: failed to allocate IP 10.43.0.50: provided IP is already allocated"),
        "{err}"
    );
    let err = fails(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "far",
            "--tcp=80:8080",
            "--clusterip=10.99.0.1",
        ],
    );
    assert!(
        err.contains("is not in the valid range. The range of valid IPs is 10.43.0.0/16"),
        "{err}"
    );
    let err = fails(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "kube2",
            "--tcp=80:8080",
            "--clusterip=10.43.0.1",
        ],
    );
    assert!(err.contains("provided IP is already allocated"), "{err}");

    // NodePort: requested and random ports, in range; a taken one is refused.
    ok(
        &s,
        &[
            "create",
            "service",
            "nodeport",
            "np",
            "--tcp=80:8080",
            "--node-port=30080",
        ],
    );
    assert_eq!(jp(&s, "np", "{.spec.ports[0].nodePort}"), "30080");
    ok(
        &s,
        &["create", "service", "nodeport", "np-auto", "--tcp=80:8080"],
    );
    let auto: i64 = jp(&s, "np-auto", "{.spec.ports[0].nodePort}")
        .parse()
        .unwrap();
    assert!((30000..=32767).contains(&auto), "{auto}");
    let err = fails(
        &s,
        &[
            "create",
            "service",
            "nodeport",
            "np2",
            "--tcp=81:8080",
            "--node-port=30080",
        ],
    );
    assert!(
        err.contains("Service \"np2\" is invalid: spec.ports[0].nodePort: Invalid value: 30080: provided port is already allocated"),
        "{err}"
    );
    let err = fails(
        &s,
        &[
            "create",
            "service",
            "nodeport",
            "np3",
            "--tcp=81:8080",
            "--node-port=8080",
        ],
    );
    assert!(
        err.contains(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{err}"
    );

    // Delete frees: the same requests now succeed.
    ok(&s, &["delete", "service", "fixed", "np"]);
    ok(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "fixed2",
            "--tcp=80:8080",
            "--clusterip=10.43.0.50",
        ],
    );
    ok(
        &s,
        &[
            "create",
            "service",
            "nodeport",
            "np2",
            "--tcp=81:8080",
            "--node-port=30080",
        ],
    );

    // Updates: SingleStack -> PreferDualStack adds a secondary address;
    // NodePort -> ClusterIP releases the node port; clusterIP is immutable.
    ok(
        &s,
        &[
            "patch",
            "svc",
            "single",
            "-p",
            r#"{"spec":{"ipFamilyPolicy":"PreferDualStack"}}"#,
        ],
    );
    let (up, fams, _) = ip_fields(&s, "single");
    assert_eq!(fams, ["IPv4", "IPv6"]);
    assert_eq!(up.len(), 2);
    assert!(in_cidr(&up[1], "fd43::", 112), "{up:?}");
    ok(
        &s,
        &[
            "patch",
            "svc",
            "np2",
            "-p",
            r#"{"spec":{"type":"ClusterIP"}}"#,
        ],
    );
    assert_eq!(jp(&s, "np2", "{.spec.ports[0].nodePort}"), "");
    ok(
        &s,
        &[
            "create",
            "service",
            "nodeport",
            "np4",
            "--tcp=80:8080",
            "--node-port=30080",
        ],
    );
    let err = fails(
        &s,
        &[
            "patch",
            "svc",
            "fixed2",
            "-p",
            r#"{"spec":{"clusterIP":"10.43.0.51","clusterIPs":["10.43.0.51"]}}"#,
        ],
    );
    assert!(
        err.contains("spec.clusterIP") && err.contains("immutable"),
        "{err}"
    );

    // Crash and restart: allocations are kept and none is handed out twice.
    let before = allocations(&s);
    assert_unique(&before);
    s.kill9();
    let s = Server::start_on(dir.path(), port, &[]);
    assert_eq!(allocations(&s), before);
    let err = fails(
        &s,
        &[
            "create",
            "service",
            "clusterip",
            "fixed3",
            "--tcp=80:8080",
            "--clusterip=10.43.0.50",
        ],
    );
    assert!(err.contains("provided IP is already allocated"), "{err}");
    let err = fails(
        &s,
        &[
            "create",
            "service",
            "nodeport",
            "np5",
            "--tcp=80:8080",
            "--node-port=30080",
        ],
    );
    assert!(err.contains("provided port is already allocated"), "{err}");
    for i in 0..15 {
        applied(
            &s,
            &svc_manifest(
                &format!("more-{i}"),
                "  type: NodePort\n  ipFamilyPolicy: PreferDualStack",
            ),
        );
    }
    let after = allocations(&s);
    assert_eq!(after.len(), before.len() + 15);
    assert_unique(&after);
    assert!(s.stop());
}

#[test]
fn single_stack_cluster_and_small_ranges() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_on(
        dir.path(),
        free_port(),
        &[
            "--service-cidr",
            "10.96.0.0/24",
            "--service-node-port-range",
            "31000-31004",
        ],
    );
    assert_eq!(jp(&s, "kubernetes", "{.spec.clusterIP}"), "10.96.0.1");

    // RequireDualStack cannot be met: 422 naming ipFamilyPolicy.
    let (good, err) = apply(
        &s,
        &svc_manifest("req", "  ipFamilyPolicy: RequireDualStack"),
    );
    assert!(!good);
    assert!(
        err.contains("spec.ipFamilyPolicy: Invalid value: \"RequireDualStack\": this cluster is not configured for dual-stack services"),
        "{err}"
    );
    let (good, err) = apply(&s, &svc_manifest("v6", "  ipFamilies: [IPv6]"));
    assert!(!good && err.contains("spec.ipFamilies[0]"), "{err}");
    // PreferDualStack settles for one family.
    applied(
        &s,
        &svc_manifest("pref", "  ipFamilyPolicy: PreferDualStack"),
    );
    let (ips, fams, _) = ip_fields(&s, "pref");
    assert_eq!(fams, ["IPv4"]);
    assert!(in_cidr(&ips[0], "10.96.0.0", 24), "{ips:?}");

    // Five node ports, then the range is full; freeing one makes room.
    let mut seen = BTreeSet::new();
    for i in 0..5 {
        let name = format!("n{i}");
        ok(
            &s,
            &["create", "service", "nodeport", &name, "--tcp=80:8080"],
        );
        let np: i64 = jp(&s, &name, "{.spec.ports[0].nodePort}").parse().unwrap();
        assert!((31000..=31004).contains(&np), "{np}");
        assert!(seen.insert(np), "{np} twice");
    }
    let err = fails(
        &s,
        &["create", "service", "nodeport", "n5", "--tcp=80:8080"],
    );
    assert!(
        err.contains("failed to allocate a nodePort: range is full"),
        "{err}"
    );
    ok(&s, &["delete", "service", "n0"]);
    ok(
        &s,
        &["create", "service", "nodeport", "n5", "--tcp=80:8080"],
    );
    assert!(s.stop());
}

#[test]
fn bad_service_flags_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    for (flags, want) in [
        (
            ["--service-cidr", "10.43.0.0/16,10.44.0.0/16"],
            "must be of different IP families",
        ),
        (["--service-cidr", "10.0.0.0/8"], "is too large"),
        (["--service-cidr", "banana"], "is not a CIDR"),
        (
            ["--service-node-port-range", "32767-30000"],
            "the first port is larger than the last",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} should be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{flags:?}: {err}");
    }
}
