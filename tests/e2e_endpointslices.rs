//! End to end: the EndpointSlice controller and router plugins against a
//! real `shoal server`, read back through the real kubectl. Pods are bound
//! to simulated nodes and their status is written through the API the way a
//! kubelet does; every wait is driven by a watch on the service's slices.

mod common;
mod sim;

use common::kubectl::have_kubectl;
use common::Server;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::wait::await_condition;
use kube::runtime::watcher;
use serde_json::{json, Value};
use shoal_host::plugin::artifacts;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const NS: &str = "default";
const WEIGHTS: &str = "routing.shoal.dev/weights";

/// kubectl that must succeed: its stdout.
fn kubectl(s: &Server, args: &[&str]) -> String {
    common::kubectl::ok(&s.kubeconfig, args).0
}

fn shoal(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The service's slices as `kubectl get endpointslices -l ... -o json` shows them.
fn slices(s: &Server, svc: &str) -> Vec<Value> {
    let out = kubectl(
        s,
        &[
            "get",
            "endpointslices",
            "-n",
            NS,
            "-l",
            &format!("kubernetes.io/service-name={svc}"),
            "-o",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    v["items"].as_array().cloned().unwrap_or_default()
}

/// Every endpoint of the slices, by address.
fn endpoints(slices: &[Value]) -> BTreeMap<String, Value> {
    slices
        .iter()
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| Some((e["addresses"][0].as_str()?.to_string(), e)))
        .collect()
}

/// Weight of every endpoint (1 unless the slice's annotation says otherwise).
fn weights(slices: &[Value]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for s in slices {
        let ann: Option<BTreeMap<String, u64>> = s
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(WEIGHTS))
            .and_then(Value::as_str)
            .map(|j| serde_json::from_str(j).expect("weights annotation is a JSON object"));
        for e in s["endpoints"].as_array().into_iter().flatten() {
            let a = e["addresses"][0].as_str().unwrap().to_string();
            let w = ann.as_ref().map_or(1, |m| m[&a]);
            out.insert(a, w);
        }
    }
    out
}

/// Wait until kubectl shows slices of `svc` for which `done` holds. The
/// watch is opened before the first look, so no change slips between a look
/// and the wait for the next one.
async fn until(
    s: &Server,
    api: &Api<EndpointSlice>,
    svc: &str,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let cfg = watcher::Config::default().labels(&format!("kubernetes.io/service-name={svc}"));
    let mut events = Box::pin(watcher(api.clone(), cfg));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = slices(s, svc);
        if done(&now) {
            return now;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.try_next()).await {
            Ok(Ok(Some(_))) => {}
            Ok(other) => panic!("watch ended while waiting for {what}: {other:?}"),
            Err(_) => panic!(
                "timed out waiting for {what}; kubectl shows {}",
                serde_json::to_string_pretty(&now).unwrap()
            ),
        }
    }
}

fn node(name: &str, zone: &str) -> Node {
    let mut n = sim::node(name, json!([]));
    n.metadata
        .labels
        .get_or_insert_default()
        .insert("topology.kubernetes.io/zone".into(), zone.into());
    n
}

/// Create a pod bound to `node` and report it Running with `ip`, as a kubelet would.
async fn running_pod(pods: &Api<Pod>, name: &str, node: &str, track: &str, ip: &str, ready: bool) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "web", "track": track}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "test/run",
            "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    set_ready(pods, name, ip, ready).await;
}

async fn set_ready(pods: &Api<Pod>, name: &str, ip: &str, ready: bool) {
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// Sum of weights per `track` label over the given addresses.
fn split(w: &BTreeMap<String, u64>, tracks: &BTreeMap<&str, &str>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (a, t) in tracks {
        *out.entry(t.to_string()).or_default() += w.get(*a).copied().unwrap_or(0);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_follow_pods_and_routers_set_weights() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let es: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();
    nodes.create(&pp, &node("n1", "zone-a")).await.unwrap();
    nodes.create(&pp, &node("n2", "zone-b")).await.unwrap();
    let _beats = sim::Heartbeats::start(client.clone(), &["n1", "n2"], Duration::from_secs(2));

    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .unwrap();
    svcs.create(&pp, &svc).await.unwrap();
    // No pods yet: one empty placeholder slice.
    let now = until(&s, &es, "web", "a placeholder slice", |sl| {
        sl.len() == 1 && endpoints(sl).is_empty()
    })
    .await;
    assert_eq!(
        now[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(now[0]["metadata"]["ownerReferences"][0]["kind"], "Service");
    assert_eq!(now[0]["metadata"]["ownerReferences"][0]["controller"], true);

    // Four stable pods and one canary, spread over two zones.
    let mut tracks = BTreeMap::new();
    for (i, (node, track)) in [
        ("n1", "stable"),
        ("n2", "stable"),
        ("n1", "stable"),
        ("n2", "stable"),
        ("n1", "canary"),
    ]
    .iter()
    .enumerate()
    {
        let ip = format!("10.244.0.{}", 10 + i);
        running_pod(&pods, &format!("web-{i}"), node, track, &ip, true).await;
        tracks.insert(ip, *track);
    }
    let tracks: BTreeMap<&str, &str> = tracks.iter().map(|(a, t)| (a.as_str(), *t)).collect();
    let now = until(&s, &es, "web", "five ready endpoints", |sl| {
        let e = endpoints(sl);
        e.len() == 5 && e.values().all(|e| e["conditions"]["ready"] == true)
    })
    .await;
    assert_eq!(now.len(), 1, "one slice holds them all");
    assert_eq!(now[0]["addressType"], "IPv4");
    assert_eq!(
        now[0]["ports"],
        json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        "the named targetPort resolves to the container port"
    );
    let e = endpoints(&now);
    let first = &e["10.244.0.10"];
    assert_eq!(first["nodeName"], "n1");
    assert_eq!(first["zone"], "zone-a");
    assert_eq!(first["targetRef"]["name"], "web-0");
    assert!(
        first.get("hints").is_none(),
        "no trafficDistribution, no hints"
    );
    assert!(
        now[0]
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(WEIGHTS))
            .is_none(),
        "equal weights need no annotation"
    );

    // The legacy Endpoints object follows along for older clients.
    let ep: Value =
        serde_json::from_str(&kubectl(&s, &["get", "endpoints", "web", "-o", "json"])).unwrap();
    let mut ips: Vec<&str> = ep["subsets"][0]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["ip"].as_str().unwrap())
        .collect();
    ips.sort();
    assert_eq!(ips, tracks.keys().copied().collect::<Vec<_>>(), "{ep}");
    assert_eq!(ep["subsets"][0]["ports"][0]["port"], 8080);

    // A sixth pod: unready, then terminating, then gone.
    running_pod(&pods, "web-x", "n2", "stable", "10.244.0.99", false).await;
    until(&s, &es, "web", "an unready endpoint", |sl| {
        endpoints(sl).get("10.244.0.99").is_some_and(|e| {
            e["conditions"] == json!({"ready": false, "serving": false, "terminating": false})
        })
    })
    .await;
    set_ready(&pods, "web-x", "10.244.0.99", true).await;
    until(&s, &es, "web", "the endpoint ready", |sl| {
        endpoints(sl)
            .get("10.244.0.99")
            .is_some_and(|e| e["conditions"]["ready"] == true)
    })
    .await;
    pods.delete("web-x", &DeleteParams::default())
        .await
        .unwrap();
    until(
        &s,
        &es,
        "web",
        "a terminating, still serving endpoint",
        |sl| {
            endpoints(sl).get("10.244.0.99").is_some_and(|e| {
                e["conditions"] == json!({"ready": false, "serving": true, "terminating": true})
            })
        },
    )
    .await;
    pods.delete("web-x", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    until(&s, &es, "web", "the deleted pod gone", |sl| {
        let e = endpoints(sl);
        e.len() == 5 && !e.contains_key("10.244.0.99")
    })
    .await;

    // trafficDistribution through the default router: own-zone hints.
    kubectl(
        &s,
        &[
            "patch",
            "service",
            "web",
            "-p",
            r#"{"spec":{"trafficDistribution":"PreferClose"}}"#,
        ],
    );
    let now = until(&s, &es, "web", "zone hints", |sl| {
        endpoints(sl)
            .values()
            .all(|e| e.pointer("/hints/forZones/0/name") == e.get("zone"))
    })
    .await;
    assert_eq!(
        endpoints(&now)["10.244.0.11"]["hints"],
        json!({"forZones": [{"name": "zone-b"}]})
    );

    // The canary router: installed with the CLI, chosen by annotation.
    let (ok, out, err) = shoal(
        &s,
        &[
            "plugin",
            "install",
            "--kind",
            "router",
            "--name",
            "canary",
            "--config",
            r#"{"label": "track", "weights": {"stable": 90, "canary": 10}}"#,
            artifacts::ROUTER_CANARY_PATH,
        ],
    );
    assert!(ok, "install failed: {out} {err}");
    assert!(out.contains("Ready"), "{out}");
    kubectl(
        &s,
        &[
            "annotate",
            "service",
            "web",
            "routing.shoal.dev/router=canary",
        ],
    );
    let now = until(&s, &es, "web", "a 90/10 split", |sl| {
        let t = split(&weights(sl), &tracks);
        t["canary"] > 0 && t["stable"] == 9 * t["canary"]
    })
    .await;
    let w = weights(&now);
    let t = split(&w, &tracks);
    println!("90/10: weights {w:?}, totals {t:?}");
    assert!(
        endpoints(&now).values().all(|e| e.get("hints").is_none()),
        "the canary router gives no hints"
    );

    // A config change takes effect without restarting anything.
    let (ok, out, err) = shoal(
        &s,
        &[
            "plugin",
            "install",
            "--kind",
            "router",
            "--name",
            "canary",
            "--config",
            r#"{"label": "track", "weights": {"stable": 50, "canary": 50}}"#,
            artifacts::ROUTER_CANARY_PATH,
        ],
    );
    assert!(ok, "update failed: {out} {err}");
    until(&s, &es, "web", "a 50/50 split", |sl| {
        let t = split(&weights(sl), &tracks);
        t["canary"] > 0 && t["stable"] == t["canary"]
    })
    .await;

    // Deleting the router: its services fall back to the default router
    // (hints again, the weights annotation goes), still without a restart.
    let default_routing = |sl: &[Value]| {
        sl.iter().all(|s| {
            s.pointer("/metadata/annotations")
                .and_then(|a| a.get(WEIGHTS))
                .is_none()
        }) && endpoints(sl).values().all(|e| e.get("hints").is_some())
    };
    kubectl(&s, &["delete", "plugins.plugins.shoal.dev", "canary"]);
    until(
        &s,
        &es,
        "web",
        "the default router after deleting canary",
        default_routing,
    )
    .await;
    kubectl(
        &s,
        &["annotate", "service", "web", "routing.shoal.dev/router-"],
    );
    let now = slices(&s, "web");
    assert!(default_routing(&now), "{now:?}");

    // A router that refuses its config is marked Failed with its reason when
    // a service first uses it; the service keeps default routing.
    let (ok, out, err) = shoal(
        &s,
        &[
            "plugin",
            "install",
            "--kind",
            "router",
            "--name",
            "broken",
            "--config",
            r#"{"weights": {"stable": 1}}"#,
            artifacts::ROUTER_CANARY_PATH,
        ],
    );
    assert!(ok, "install failed: {out} {err}");
    kubectl(
        &s,
        &[
            "annotate",
            "service",
            "web",
            "routing.shoal.dev/router=broken",
        ],
    );
    let plugins: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("plugins.shoal.dev", "v1alpha1", "Plugin"),
            "plugins",
        ),
    );
    let failed = tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(plugins, "broken", |o: Option<&DynamicObject>| {
            o.is_some_and(|o| o.data.pointer("/status/state") == Some(&json!("Failed")))
        }),
    )
    .await
    .expect("the broken router is marked Failed")
    .unwrap()
    .unwrap();
    let reason = failed.data["status"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("label"), "{reason}");
    let now = slices(&s, "web");
    assert!(default_routing(&now), "{now:?}");

    // Deleting the service deletes its slices (owner reference, garbage collector).
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    until(&s, &es, "web", "no slices", |sl| sl.is_empty()).await;
    assert!(s.stop());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_endpoints_split_and_hand_made_slices_stay() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let client = s.client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let svcs: Api<Service> = Api::namespaced(client.clone(), NS);
    let es: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();
    nodes.create(&pp, &node("n1", "zone-a")).await.unwrap();
    let _beats = sim::Heartbeats::start(client.clone(), &["n1"], Duration::from_secs(2));

    // A dual-stack headless service with 150 dual-stack pods.
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "None",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))
    .unwrap();
    svcs.create(&pp, &svc).await.unwrap();
    for i in 0..150 {
        let name = format!("big-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "test/run"}]},
        }))
        .unwrap();
        pods.create(&pp, &pod).await.unwrap();
        let (v4, v6) = (
            format!("10.1.{}.{}", i / 100, i % 100 + 1),
            format!("fd00::{:x}", i + 1),
        );
        let status = json!({"status": {"phase": "Running", "podIP": v4, "podIPs": [{"ip": v4}, {"ip": v6}],
            "conditions": [{"type": "Ready", "status": "True"}]}});
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    // Without ipFamilies a headless service gets every family its pods have;
    // if the API server defaulted its families, those.
    let fams: Vec<String> = svcs
        .get("big")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.ip_families)
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec!["IPv4".into(), "IPv6".into()]);
    let want = 150 * fams.len();
    let now = until(&s, &es, "big", "150 endpoints per family", |sl| {
        endpoints(sl).len() == want
    })
    .await;
    let mut per_type: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for sl in &now {
        per_type
            .entry(sl["addressType"].as_str().unwrap().to_string())
            .or_default()
            .push(sl["endpoints"].as_array().unwrap().len());
        assert_eq!(
            sl["metadata"]["labels"]["service.kubernetes.io/headless"],
            ""
        );
    }
    for (t, sizes) in &per_type {
        let mut sizes = sizes.clone();
        sizes.sort();
        assert_eq!(sizes, [50, 100], "{t}: at most 100 per slice");
    }
    assert_eq!(
        per_type.keys().cloned().collect::<Vec<_>>(),
        {
            let mut f = fams.clone();
            f.sort();
            f
        },
        "a set of slices per family"
    );

    // A service without a selector: the user's slice is left alone.
    let manual: Service = serde_json::from_value(json!({
        "metadata": {"name": "manual"},
        "spec": {"ports": [{"port": 80}]},
    }))
    .unwrap();
    svcs.create(&pp, &manual).await.unwrap();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "manual-1", "labels": {"kubernetes.io/service-name": "manual"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.0.2.1"]}],
        "ports": [{"port": 80}],
    }))
    .unwrap();
    es.create(&pp, &slice).await.unwrap();
    // Touch the service; the controller has nothing to do with it.
    kubectl(&s, &["annotate", "service", "manual", "touched=yes"]);
    // A change to the big service after that shows the controller has caught up.
    pods.delete("big-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    until(&s, &es, "big", "one pod fewer", |sl| {
        endpoints(sl).len() == want - fams.len()
    })
    .await;
    let manual_slices = slices(&s, "manual");
    assert_eq!(manual_slices.len(), 1);
    assert_eq!(endpoints(&manual_slices).len(), 1);
    assert!(manual_slices[0]["metadata"]["labels"]
        .get("endpointslice.kubernetes.io/managed-by")
        .is_none());
    assert!(s.stop());
}
