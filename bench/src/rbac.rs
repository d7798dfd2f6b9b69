//! `shoal-bench rbac`: RBAC decisions per second through the Wasm plugin.
//!
//! In-process, through the host's plugin runtime and the authorizer's
//! instance pool (`shoal_host::authz::pool`): the built-in `rbac` component
//! is fed the default `view`-like ClusterRole and N RoleBindings (one user
//! each, spread over namespaces), then T threads decide requests of random
//! users for a mix of granted and not-granted attributes for a fixed time.

use anyhow::{Context, Result};
use serde_json::json;
use shoal_host::authz::pool::{install_for_test, Pools};
use shoal_host::plugin::{
    artifacts, Attributes, Decision, PluginKind, PluginRuntime, RuntimeConfig,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Arguments of `shoal-bench rbac`.
#[derive(clap::Args)]
pub struct Args {
    /// RoleBindings in the view.
    #[arg(long, default_value_t = 10_000)]
    bindings: usize,
    /// Namespaces the bindings are spread over.
    #[arg(long, default_value_t = 1_000)]
    namespaces: usize,
    /// Deciding threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Plugin instances in the pool (0: the server's default).
    #[arg(long, default_value_t = 0)]
    instances: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
}

fn objects(bindings: usize, namespaces: usize) -> Vec<(String, String, String)> {
    let mut out = Vec::with_capacity(bindings + 1);
    let view = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
    "metadata": {"name": "view"},
    "rules": [
        {"apiGroups": [""], "resources": ["configmaps", "endpoints", "persistentvolumeclaims", "pods",
            "replicationcontrollers", "serviceaccounts", "services"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events", "pods/log", "pods/status", "resourcequotas"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apps"], "resources": ["deployments", "replicasets", "statefulsets", "daemonsets", "deployments/scale"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": ["get", "list", "watch"]},
    ]});
    out.push((
        "ClusterRole".into(),
        "/rbac.authorization.k8s.io/clusterroles/view".into(),
        view.to_string(),
    ));
    for i in 0..bindings {
        let ns = format!("ns{}", i % namespaces);
        let b = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": format!("b{i}"), "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": format!("user{i}")},
                         {"kind": "Group", "name": format!("team{}", i % 500)}]});
        out.push((
            "RoleBinding".into(),
            format!("/rbac.authorization.k8s.io/rolebindings/{ns}/b{i}"),
            b.to_string(),
        ));
    }
    out
}

/// A fixed, varied set of requests: granted (own namespace, granted verb)
/// and not (other namespace, write verb, secrets).
fn requests(n: usize, bindings: usize, namespaces: usize) -> Vec<Attributes> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..n)
        .map(|_| {
            let i = (next() as usize) % bindings;
            let kind = next() % 4;
            let ns = if kind == 1 {
                format!("ns{}", (i + 1) % namespaces)
            } else {
                format!("ns{}", i % namespaces)
            };
            let (verb, resource) = match kind {
                2 => ("create", "pods"),
                3 => ("get", "secrets"),
                _ => (["get", "list", "watch"][(next() % 3) as usize], "pods"),
            };
            Attributes {
                user: format!("user{i}"),
                groups: vec![
                    "system:authenticated".into(),
                    format!("team{}", next() % 500),
                ],
                verb: verb.into(),
                resource_request: true,
                namespace: ns,
                api_group: String::new(),
                resource: resource.into(),
                subresource: String::new(),
                name: if verb == "get" {
                    "p".into()
                } else {
                    String::new()
                },
                path: String::new(),
            }
        })
        .collect()
}

fn measure(
    pools: &Arc<Pools>,
    reqs: &Arc<Vec<Attributes>>,
    threads: usize,
    secs: f64,
) -> (f64, u64, u64) {
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (pools, reqs) = (pools.clone(), reqs.clone());
            std::thread::spawn(move || {
                let (mut n, mut allowed) = (0u64, 0u64);
                let mut i = t * 7919;
                while Instant::now() < stop {
                    for _ in 0..256 {
                        let a = &reqs[i % reqs.len()];
                        i += 1;
                        if let Some((Decision::Allow, _)) = pools.decide(a) {
                            allowed += 1;
                        }
                        n += 1;
                    }
                }
                (n, allowed)
            })
        })
        .collect();
    let (mut n, mut allowed) = (0, 0);
    for h in handles {
        let (a, b) = h.join().expect("bench thread");
        n += a;
        allowed += b;
    }
    (n as f64 / started.elapsed().as_secs_f64(), n, allowed)
}

/// Run the benchmark; returns the JSON line.
pub fn run(args: Args) -> Result<String> {
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let runtime = PluginRuntime::new(RuntimeConfig::default()).context("plugin runtime")?;
    let loaded = Arc::new(
        runtime
            .load("rbac", PluginKind::Authorizer, artifacts::RBAC)
            .context("loading the rbac component")?,
    );
    let pools = Arc::new(Pools::new());
    let objs = objects(args.bindings, args.namespaces);
    let t0 = Instant::now();
    install_for_test(&pools, loaded.clone(), args.instances, objs).context("feeding the view")?;
    let feed_ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "rbac: {} bindings fed to the pool in {feed_ms:.0} ms",
        args.bindings
    );
    let reqs = Arc::new(requests(100_000, args.bindings, args.namespaces));
    // Warm up, then one thread, then all threads.
    measure(&pools, &reqs, threads, 0.5);
    let (single, _, _) = measure(&pools, &reqs, 1, args.seconds);
    eprintln!("rbac: 1 thread: {single:.0} decisions/s");
    let (multi, n, allowed) = measure(&pools, &reqs, threads, args.seconds);
    eprintln!("rbac: {threads} threads: {multi:.0} decisions/s");
    // Correctness guard: a quarter of the mix (own namespace, read) is granted.
    let frac = allowed as f64 / n.max(1) as f64;
    anyhow::ensure!(
        (0.2..0.35).contains(&frac),
        "unexpected allowed fraction {frac:.3}: the view is not what was fed"
    );
    Ok(json!({
        "bench": "rbac",
        "bindings": args.bindings,
        "threads": threads,
        "instances": if args.instances == 0 { threads.clamp(2, 4) } else { args.instances },
        "decisions_per_sec": multi.round(),
        "decisions_per_sec_1_thread": single.round(),
        "allowed_fraction": (frac * 1000.0).round() / 1000.0,
        "feed_ms": feed_ms.round(),
    })
    .to_string())
}
