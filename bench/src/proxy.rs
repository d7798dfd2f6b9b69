//! `shoal-bench proxy`: the nftables service proxy's sync cost.
//!
//! For each size (default 1,000 and 10,000 services × 10 endpoints) a
//! network namespace of its own (`shoal-bench-proxy-<pid>-<n>`, deleted
//! afterwards) gets the agent proxy's tables, written by the real code path
//! (`Proxier::sync`: rule generation, diff, and the transaction through
//! the agent's backend: libnftables with one context opened inside the
//! namespace — this thread joins it with `setns` for the run — or, with
//! `--backend cli`, `nft -f -` run through `nsenter --net`). Timed:
//!
//! - `full_ms`: the first sync (both tables from nothing);
//! - `endpoint_change_ms`: one endpoint of one service replaced (median and
//!   max of `--repeat` runs);
//! - `new_service_ms`: one new service with its slice (median and max).
//!
//! Each figure is wall time from the change being known to the transaction
//! being committed (libnftables or `nft` returning).
//! At the end the maps are listed to check every service and endpoint is there.
//! Needs root, iproute2, nsenter and nftables.

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{json, Value};
use shoal_agent::proxy::model::NodeView;
use shoal_agent::proxy::nft::{LibNft, Nft, NftCommand};
use shoal_agent::proxy::proxier::{Proxier, Synced};
use std::process::Command;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Service counts to measure, comma-separated.
    #[arg(long, default_value = "1000,10000", value_delimiter = ',')]
    services: Vec<usize>,
    /// Endpoints per service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Runs of each incremental change.
    #[arg(long, default_value_t = 9)]
    repeat: usize,
    /// How transactions reach the kernel: `lib` (libnftables, as the agent
    /// does) or `cli` (an `nft -f -` process per transaction, its fallback).
    #[arg(long, default_value = "lib", value_parser = ["lib", "cli"])]
    backend: String,
}

/// This thread inside a network namespace until dropped.
struct InNetns(std::fs::File);

impl InNetns {
    fn enter(path: &str) -> Result<InNetns> {
        let home = std::fs::File::open("/proc/thread-self/ns/net")?;
        let target = std::fs::File::open(path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns {path}"))?;
        Ok(InNetns(home))
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        if let Err(e) = nix::sched::setns(&self.0, nix::sched::CloneFlags::CLONE_NEWNET) {
            // Staying in the bench namespace would send later runs' traffic there.
            eprintln!("setns back to the original namespace: {e}");
            std::process::exit(1);
        }
    }
}

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn create(name: String) -> Result<Netns> {
        let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        if !out.status.success() {
            bail!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
    }
}

fn service(i: usize) -> Service {
    let ip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))
    .expect("service JSON")
}

fn slice(i: usize, endpoints: usize, generation: usize) -> EndpointSlice {
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            // The first endpoint moves with `generation`; the others stay.
            let n = if e == 0 { i * endpoints + generation * 7919 } else { i * endpoints + e };
            json!({"addresses": [format!("10.{}.{}.{}", 128 + (n / 65536) % 64, (n / 256) % 256, n % 256)],
                   "conditions": {"ready": true}, "nodeName": "bench-node"})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    }))
    .expect("slice JSON")
}

fn ms(t: Instant) -> f64 {
    crate::common::round(t.elapsed().as_secs_f64() * 1000.0, 2)
}

fn stats(mut xs: Vec<f64>) -> Value {
    xs.sort_by(|a, b| a.total_cmp(b));
    json!({"median": xs[xs.len() / 2], "max": xs[xs.len() - 1]})
}

fn one_size(n: usize, args: &Args) -> Result<Value> {
    let ns = Netns::create(format!("shoal-bench-proxy-{}-{n}", std::process::id()))?;
    let cli = NftCommand::with_prefix(["nsenter", &format!("--net=/run/netns/{}", ns.0), "--"]);
    if !cli.available() {
        bail!("nft does not run in the namespace (apt-get install nftables)");
    }
    // Declared before the context so the context is freed first, inside.
    let _inside;
    let nft: Box<dyn Nft> = if args.backend == "lib" {
        _inside = InNetns::enter(&format!("/run/netns/{}", ns.0))?;
        Box::new(LibNft::open().map_err(|e| anyhow::anyhow!("libnftables: {e}"))?)
    } else {
        Box::new(cli)
    };
    let mut p = Proxier::new(NodeView {
        name: "bench-node".into(),
        zone: Some("a".into()),
    });
    p.set_pod_cidrs(vec!["10.128.0.0/10".into()]);
    for i in 0..n {
        p.apply_service(service(i));
        p.apply_slice(slice(i, args.endpoints, 0));
    }
    let t = Instant::now();
    let kind = p.sync(&*nft).context("full sync")?;
    let full_ms = ms(t);
    anyhow::ensure!(kind == Synced::Full, "first sync was {kind:?}");
    eprintln!("{n} services: full sync {full_ms} ms");

    let mut change = Vec::new();
    for r in 1..=args.repeat {
        let i = (r * 7727) % n;
        let t = Instant::now();
        p.apply_slice(slice(i, args.endpoints, r));
        let kind = p.sync(&*nft).context("endpoint change")?;
        change.push(ms(t));
        anyhow::ensure!(kind == Synced::Changed(1), "endpoint change was {kind:?}");
    }
    let mut added = Vec::new();
    for r in 0..args.repeat {
        let i = n + r;
        let t = Instant::now();
        p.apply_service(service(i));
        p.apply_slice(slice(i, args.endpoints, 0));
        let kind = p.sync(&*nft).context("new service")?;
        added.push(ms(t));
        anyhow::ensure!(kind == Synced::Changed(1), "new service was {kind:?}");
    }
    // Every service, and each of its endpoints' buckets, is in the kernel's maps.
    let list = |map: &str| -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.0))
            .args(["--", "nft", "list", "map", "ip", "shoal-proxy", map])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let listed = list("service-ips")?.matches("goto lb-").count();
    anyhow::ensure!(
        listed == n + args.repeat,
        "service-ips has {listed} entries, expected {}",
        n + args.repeat
    );
    let endpoints = list("service-endpoints")?;
    // After the declaration (`typeof … : …`), one ` : ` per element.
    let buckets = endpoints
        .split_once("elements = {")
        .map_or(0, |(_, els)| els.matches(" : ").count());
    anyhow::ensure!(
        buckets == (n + args.repeat) * args.endpoints,
        "service-endpoints has {buckets} entries, expected {}",
        (n + args.repeat) * args.endpoints
    );
    eprintln!("{n} services: endpoint change {change:?} ms, new service {added:?} ms");
    Ok(json!({
        "backend": args.backend,
        "services": n,
        "endpoints_per_service": args.endpoints,
        "full_ms": full_ms,
        "endpoint_change_ms": stats(change),
        "new_service_ms": stats(added),
    }))
}

pub fn run(args: Args) -> Result<String> {
    if args.services.contains(&0) || args.endpoints == 0 || args.repeat == 0 {
        bail!("--services, --endpoints and --repeat must be positive");
    }
    let mut runs = Vec::new();
    for n in &args.services {
        runs.push(one_size(*n, &args)?);
    }
    Ok(json!({"bench": "proxy", "runs": runs}).to_string())
}
