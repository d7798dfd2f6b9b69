//! `shoal-bench scheduler`: end-to-end scheduling throughput and latency.
//!
//! For each node count N in `--nodes` and each mode (the default policies as
//! Wasm, the normal `shoal server`; and the same policies compiled natively
//! into the host, `shoal server --native-policies`), one fresh server:
//!
//! 1. wait until the built-in `default` scheduler plugin is `Ready` (setup);
//! 2. create N simulated Node objects through the API (no agents), 64
//!    requests in flight (setup);
//! 3. open a watch on the pods of `default` from a list's resourceVersion and
//!    schedule one warm-up pod, so the scheduler has taken in every node and
//!    the policy has run once before the clock starts (setup);
//! 4. create M pending pods with 64 concurrent clients, recording each
//!    pod's create-request start, while the watch records when each pod is
//!    first seen with `spec.nodeName` set (timed, until all M are bound or
//!    `--timeout` runs out).
//!
//! Figures per run: pods/s = M / (last bind seen − first create start),
//! p50/p99 of per-pod latency (bind seen − create start), distinct nodes
//! used, and whether every pod went from unbound to bound exactly once and
//! never moved. Diagnostics beside them, over the same timed window: CPU of
//! the server, of its `scheduler` thread (policy calls run there) and of this
//! process; bytes the server wrote to disk; the store's group commits (from
//! /metrics: count, mean latency, transactions per commit, and the fraction
//! of the window the single writer spent committing). The top-level
//! `wasm_over_native_<N>` is native pods/s ÷ Wasm pods/s (Wasm time over
//! native time); `wasm_over_native_sched_cpu_<N>` is the same ratio for the
//! scheduler thread's CPU alone. Every request goes to 127.0.0.1 only; every
//! loop is bounded by a count or a deadline. The POLL at 50 ms is used only
//! for setup (plugin Ready), never inside the timed window.

use crate::common::{cpu_seconds, io_write_bytes, round, rss_mb, strip_ansi, Conn, Ctx, Server};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Requests in flight while creating nodes and pods.
pub(crate) const CLIENTS: usize = 64;
/// Poll interval while waiting for the plugin to be Ready (setup only).
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for a setup condition.
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the watch keeps running after the last bind, to catch late moves.
const GRACE: Duration = Duration::from_millis(500);
/// Times the pod watch is resumed (from its last resourceVersion) if it ends early.
const MAX_WATCH_RESUMES: u32 = 5;
/// Name of the unmeasured warm-up pod (not `bench-*`).
const WARMUP_POD: &str = "warmup-0";
pub(crate) const PLUGIN_PATH: &str = "/apis/plugins.shoal.dev/v1alpha1/plugins/default";
const PODS_PATH: &str = "/api/v1/namespaces/default/pods";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// The default policies as Wasm (normal `shoal server`).
    Wasm,
    /// The same policies compiled into the host (`shoal server --native-policies`).
    Native,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Wasm => "wasm",
            Mode::Native => "native",
        }
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// The `shoal` binary to benchmark [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Simulated node counts; each gets one server run per mode.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    nodes: Vec<usize>,
    /// Pending pods scheduled per run.
    #[arg(long, default_value_t = 5_000)]
    pods: usize,
    /// Policy modes to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "wasm,native")]
    modes: Vec<Mode>,
    /// Seconds to wait, from the first pod create, for every pod to be bound.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Copy each server's stderr log into this directory (scheduler-<N>-<mode>.log).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// Runs the benchmark; returns the JSON line and whether every run completed.
pub async fn run(args: Args) -> Result<(String, bool)> {
    let started = Instant::now();
    let bin = crate::common::resolve_bin(args.shoal.as_deref())?;
    if args.pods == 0 || args.nodes.is_empty() || args.nodes.contains(&0) {
        bail!("--pods and every --nodes count must be positive");
    }
    if let Some(dir) = &args.log_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut results = Vec::new();
    let mut all_ok = true;
    for &n in &args.nodes {
        for &mode in &args.modes {
            eprintln!("== {n} nodes, {} pods, {} policies", args.pods, mode.name());
            let t = Instant::now();
            let r = run_one(&bin, &args, n, mode).await;
            let r = match r {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("run failed: {e:#}");
                    json!({"nodes": n, "mode": mode.name(), "error": format!("{e:#}")})
                }
            };
            if r.get("error").is_some() {
                all_ok = false;
            }
            eprintln!("== run took {:.1}s: {r}", t.elapsed().as_secs_f64());
            results.push(r);
        }
    }
    let mut ratios = Vec::new();
    for &n in &args.nodes {
        // A figure of the complete (N, mode) run.
        let fig = |mode: &str, key: &str| {
            results
                .iter()
                .find(|r| r["nodes"] == json!(n) && r["mode"] == mode)
                .filter(|r| r.get("error").is_none())
                .and_then(|r| r[key].as_f64())
                .filter(|x| *x > 0.0)
        };
        let ratio = |num: Option<f64>, den: Option<f64>| match (num, den) {
            (Some(a), Some(b)) => json!(round(a / b, 3)),
            _ => Value::Null,
        };
        if args.modes.len() > 1 {
            // End to end: native pods/s over Wasm pods/s (= Wasm time over native time).
            ratios.push((
                format!("wasm_over_native_{n}"),
                ratio(fig("native", "pods_per_s"), fig("wasm", "pods_per_s")),
            ));
            // The scheduler thread's CPU alone, Wasm over native.
            ratios.push((
                format!("wasm_over_native_sched_cpu_{n}"),
                ratio(
                    fig("wasm", "scheduler_thread_cpu_s"),
                    fig("native", "scheduler_thread_cpu_s"),
                ),
            ));
        }
    }
    let mut out = json!({
        "bench": "scheduler",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "pods": args.pods,
        "results": results,
    });
    for (k, v) in ratios {
        out[k] = v;
    }
    eprintln!(
        "scheduler bench finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok((out.to_string(), all_ok))
}

/// One server run: start, measure, look at the log, stop.
async fn run_one(bin: &Path, args: &Args, nodes: usize, mode: Mode) -> Result<Value> {
    let extra: &[&str] = match mode {
        Mode::Wasm => &[],
        Mode::Native => &["--native-policies"],
    };
    let mut server = Server::start(bin, "shoal-bench-scheduler-", extra).await?;
    eprintln!("server ready (pid {}, {})", server.pid, server.addr);
    let result = measure(&server, args, nodes, mode).await;
    let rss = rss_mb(server.pid).ok();
    let crashed = server.exited();

    // What the server said about itself: warnings and errors in its log.
    let log = strip_ansi(&server.log_text());
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    if !noisy.is_empty() {
        eprintln!("server log has {} WARN/ERROR lines, e.g.:", noisy.len());
        for l in noisy.iter().take(5) {
            eprintln!("  {l}");
        }
    }
    if let Some(dir) = &args.log_dir {
        let path = dir.join(format!("scheduler-{nodes}-{}.log", mode.name()));
        if let Err(e) = std::fs::write(&path, &log) {
            eprintln!("saving the server log to {}: {e}", path.display());
        }
    }
    let stopping = Instant::now();
    let stop = server.stop().await;
    let stop_s = stopping.elapsed().as_secs_f64();
    match stop {
        Ok(st) if st.success() => {}
        Ok(st) => eprintln!("server exited with {st} after SIGTERM"),
        Err(e) => eprintln!("stopping the server: {e:#}"),
    }

    let mut figures = result?;
    figures["server_rss_mb"] = json!(rss.map(|r| round(r, 1)));
    figures["server_warn_lines"] = json!(noisy.len());
    // SIGTERM until exit (and the temp dir removed).
    figures["server_stop_s"] = json!(round(stop_s, 2));
    if let Some(st) = crashed {
        figures["error"] = json!(format!("server exited during the run: {st}"));
    }
    Ok(figures)
}

async fn measure(server: &Server, args: &Args, nodes: usize, mode: Mode) -> Result<Value> {
    let ctx = Arc::new(Ctx::new(
        server.addr,
        &server.data_dir.join("admin.kubeconfig"),
    )?);
    let mut control = ctx.connect().await?;

    // Setup 1: the default scheduler plugin is Ready.
    let t = Instant::now();
    wait_plugin_ready(&ctx, &mut control).await?;
    let plugin_ready_s = t.elapsed().as_secs_f64();
    eprintln!("plugin default Ready after {plugin_ready_s:.2}s");

    // Setup 2: the nodes.
    let mut pool = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        pool.push(ctx.connect().await?);
    }
    let made = create_many(&ctx, &mut pool, "nodes", "/api/v1/nodes", nodes, node_body).await?;
    eprintln!(
        "created {} nodes in {:.2}s ({:.0}/s), {} errors",
        made.ok,
        made.elapsed.as_secs_f64(),
        made.ok as f64 / made.elapsed.as_secs_f64(),
        made.errors
    );
    if made.errors > 0 {
        bail!(
            "{} of {nodes} node creates failed ({} with 5xx)",
            made.errors,
            made.server_errors
        );
    }
    let nodes_create_s = made.elapsed.as_secs_f64();
    let first = get_json(&ctx, &mut control, "/api/v1/nodes/node-0001").await?;
    if first.pointer("/status/allocatable/cpu").is_none() {
        bail!("the server dropped status.allocatable from a created Node: {first}");
    }

    // Setup 2b: node IPAM has given every node its podCIDRs, so its node
    // updates are over before the timed window (a real cluster's nodes get
    // theirs once, when they register).
    let t = Instant::now();
    let deadline = Instant::now() + SETUP_TIMEOUT;
    loop {
        let list = get_json(&ctx, &mut control, "/api/v1/nodes").await?;
        let with_cidrs = list["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter(|n| n.pointer("/spec/podCIDRs").is_some())
                    .count()
            })
            .unwrap_or(0);
        if with_cidrs >= nodes {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {with_cidrs} of {nodes} nodes got podCIDRs within {SETUP_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let node_cidrs_s = t.elapsed().as_secs_f64();
    eprintln!("all nodes have podCIDRs after {node_cidrs_s:.2}s more");

    // Setup 3: the pod watch, and one warm-up pod through the whole path.
    let list = get_json(&ctx, &mut control, &format!("{PODS_PATH}?limit=1")).await?;
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("pod list has no metadata.resourceVersion: {list}"))?
        .to_string();
    let watcher = Watcher::start(ctx.clone(), rv, args.pods).await?;
    let mut progress = watcher.progress.clone();
    let t = Instant::now();
    let body = pod_body(WARMUP_POD);
    let req = ctx.request(
        &control,
        Method::POST,
        PODS_PATH,
        Bytes::from(body.to_string()),
    )?;
    let (status, resp) = control.call(req).await?;
    if status != StatusCode::CREATED {
        bail!(
            "creating the warm-up pod: {status}: {}",
            String::from_utf8_lossy(&resp)
        );
    }
    let warm_deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    while !progress.borrow().warmup_bound {
        match tokio::time::timeout_at(warm_deadline, progress.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                let t = watcher.finish().await;
                bail!(
                    "the pod watch ended before the warm-up pod was bound: {}",
                    t.error.unwrap_or_default()
                );
            }
            Err(_) => bail!("the warm-up pod was not bound within {SETUP_TIMEOUT:?}"),
        }
    }
    let warmup_bind_ms = t.elapsed().as_secs_f64() * 1000.0;
    eprintln!(
        "warm-up pod bound after {warmup_bind_ms:.1} ms; creating {} pods",
        args.pods
    );
    let use_before = Usage::now(server.pid, &ctx, &mut control).await;

    // Timed: M pods created by 64 clients; the watch sees them bound.
    let timeout = Duration::from_secs(args.timeout);
    let made = create_many(&ctx, &mut pool, "pods", PODS_PATH, args.pods, |i| {
        pod_body(&format!("bench-{i}"))
    })
    .await?;
    let create_s = made.elapsed.as_secs_f64();
    eprintln!(
        "created {} pods in {create_s:.2}s ({:.0}/s), {} errors ({} 5xx)",
        made.ok,
        made.ok as f64 / create_s,
        made.errors,
        made.server_errors
    );
    let want = made.ok as usize;
    let t0 = made.first.unwrap_or_else(Instant::now);
    let deadline = tokio::time::Instant::from_std(t0 + timeout);
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut failure = None;
    loop {
        let bound = progress.borrow().bound;
        if bound >= want {
            break;
        }
        tokio::select! {
            r = progress.changed() => if r.is_err() {
                failure = Some(format!("the pod watch ended with {bound} of {want} pods bound"));
                break;
            },
            _ = tick.tick() => eprintln!(
                "  bound {bound}/{want} after {:.1}s",
                t0.elapsed().as_secs_f64()
            ),
            _ = tokio::time::sleep_until(deadline) => {
                failure = Some(format!(
                    "only {bound} of {want} pods were bound within {}s of the first create",
                    args.timeout
                ));
                break;
            }
        }
    }
    let used = Usage::now(server.pid, &ctx, &mut control)
        .await
        .since(&use_before);
    if failure.is_none() {
        tokio::time::sleep(GRACE).await;
    }
    let tracked = watcher.finish().await;
    if let Some(e) = &tracked.error {
        eprintln!("pod watch: {e}");
    }

    let mut r = json!({"nodes": nodes, "mode": mode.name()});
    let bound = tracked.pods.iter().filter(|p| p.bound_at.is_some()).count();
    if let Some(f) = failure {
        // Show why a few pods were not bound.
        let mut shown = 0;
        for (i, p) in tracked.pods.iter().enumerate() {
            if p.bound_at.is_none() && made.starts[i].is_some() && shown < 3 {
                shown += 1;
                match get_json(&ctx, &mut control, &format!("{PODS_PATH}/bench-{i}")).await {
                    Ok(v) => eprintln!(
                        "unbound bench-{i}: nodeName {:?}, conditions {}",
                        v.pointer("/spec/nodeName"),
                        v.pointer("/status/conditions").unwrap_or(&Value::Null)
                    ),
                    Err(e) => eprintln!("unbound bench-{i}: GET failed: {e:#}"),
                }
            }
        }
        r["error"] = json!(f);
        r["bound"] = json!(bound);
        return Ok(r);
    }

    // Figures.
    let mut lat_us: Vec<u64> = Vec::with_capacity(args.pods);
    let mut last = t0;
    let mut nodes_used = HashSet::new();
    for (p, start) in tracked.pods.iter().zip(&made.starts) {
        if let (Some(b), Some(s)) = (p.bound_at, start) {
            lat_us.push(b.saturating_duration_since(*s).as_micros() as u64);
            last = last.max(b);
        }
        if let Some(n) = &p.node {
            nodes_used.insert(n.as_str());
        }
    }
    lat_us.sort_unstable();
    let span = last.saturating_duration_since(t0).as_secs_f64();
    let exactly_once = tracked
        .pods
        .iter()
        .zip(&made.starts)
        .filter(|(_, s)| s.is_some())
        .all(|(p, _)| p.binds == 1 && p.moves == 0 && p.unbinds == 0 && !p.deleted);
    let anomalies: (u32, u32, u32) = tracked.pods.iter().fold((0, 0, 0), |a, p| {
        (
            a.0 + p.binds.saturating_sub(1),
            a.1 + p.moves,
            a.2 + p.unbinds,
        )
    });
    if !exactly_once {
        eprintln!(
            "not bound exactly once: {} extra binds, {} node changes, {} unbinds",
            anomalies.0, anomalies.1, anomalies.2
        );
    }
    r["pods_per_s"] = json!(round(want as f64 / span, 1));
    r["p50_ms"] = json!(round(percentile_ms(&lat_us, 0.50), 1));
    r["p99_ms"] = json!(round(percentile_ms(&lat_us, 0.99), 1));
    r["distinct_nodes"] = json!(nodes_used.len());
    r["bound_exactly_once"] = json!(exactly_once);
    r["schedule_s"] = json!(round(span, 3));
    r["create_s"] = json!(round(create_s, 3));
    r["last_bind_after_last_create_ms"] = json!(round(
        (last.saturating_duration_since(made.end).as_secs_f64()
            - made.end.saturating_duration_since(last).as_secs_f64())
            * 1000.0,
        1
    ));
    r["create_errors"] = json!(made.errors);
    r["nodes_create_s"] = json!(round(nodes_create_s, 3));
    r["node_cidrs_s"] = json!(round(node_cidrs_s, 3));
    r["plugin_ready_s"] = json!(round(plugin_ready_s, 3));
    r["warmup_bind_ms"] = json!(round(warmup_bind_ms, 1));
    r["watch_events"] = json!(tracked.events);
    // Resources used from just before the first pod create until all were bound.
    let per_pod = |x: Option<f64>, scale: f64| x.map(|x| round(x * scale / want as f64, 1));
    r["server_cpu_s"] = json!(used.server_cpu.map(|c| round(c, 2)));
    r["scheduler_thread_cpu_s"] = json!(used.scheduler_cpu.map(|c| round(c, 2)));
    r["scheduler_cpu_us_per_pod"] = json!(per_pod(used.scheduler_cpu, 1e6));
    r["bench_cpu_s"] = json!(used.bench_cpu.map(|c| round(c, 2)));
    r["server_disk_write_mb"] = json!(used.write_bytes.map(|b| round(b / 1048576.0, 1)));
    r["server_disk_write_kb_per_pod"] = json!(per_pod(used.write_bytes, 1.0 / 1024.0));
    if let Some(st) = used.store {
        r["store_commits"] = json!(st.count);
        r["store_commit_mean_ms"] = json!(round(st.seconds * 1000.0 / st.count.max(1.0), 2));
        r["store_txns_per_commit"] = json!(round(st.txns / st.count.max(1.0), 1));
        r["store_writer_busy"] = json!(round(st.seconds / span, 2));
    }
    if made.errors > 0 {
        r["error"] = json!(format!(
            "{} of {} pod creates failed ({} with 5xx)",
            made.errors, args.pods, made.server_errors
        ));
    }
    eprintln!(
        "{} pods bound in {span:.2}s = {:.0} pods/s, p50 {:.1} ms, p99 {:.1} ms, {} nodes used",
        want,
        want as f64 / span,
        percentile_ms(&lat_us, 0.50),
        percentile_ms(&lat_us, 0.99),
        nodes_used.len()
    );
    Ok(r)
}

/// Resource use so far: CPU of the server, its scheduler thread and this
/// process; bytes the server wrote to disk; the store's commit counters.
struct Usage {
    server_cpu: Option<f64>,
    scheduler_cpu: Option<f64>,
    bench_cpu: Option<f64>,
    write_bytes: Option<f64>,
    store: Option<StoreCommits>,
}

/// The store's group-commit counters from /metrics.
#[derive(Clone, Copy)]
struct StoreCommits {
    /// Commits.
    count: f64,
    /// Seconds spent committing.
    seconds: f64,
    /// Transactions folded into those commits.
    txns: f64,
}

impl Usage {
    async fn now(server_pid: u32, ctx: &Ctx, conn: &mut Conn) -> Usage {
        let store = match store_commits(ctx, conn).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("reading the store commit metrics: {e:#}");
                None
            }
        };
        Usage {
            server_cpu: cpu_seconds(server_pid, None).ok(),
            scheduler_cpu: cpu_seconds(server_pid, Some("scheduler")).ok(),
            bench_cpu: cpu_seconds(std::process::id(), None).ok(),
            write_bytes: io_write_bytes(server_pid).ok().map(|b| b as f64),
            store,
        }
    }

    fn since(&self, before: &Usage) -> Usage {
        let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        Usage {
            server_cpu: d(self.server_cpu, before.server_cpu),
            scheduler_cpu: d(self.scheduler_cpu, before.scheduler_cpu),
            bench_cpu: d(self.bench_cpu, before.bench_cpu),
            write_bytes: d(self.write_bytes, before.write_bytes),
            store: match (self.store, before.store) {
                (Some(a), Some(b)) => Some(StoreCommits {
                    count: a.count - b.count,
                    seconds: a.seconds - b.seconds,
                    txns: a.txns - b.txns,
                }),
                _ => None,
            },
        }
    }
}

/// Read the store commit counters from the server's Prometheus /metrics.
async fn store_commits(ctx: &Ctx, conn: &mut Conn) -> Result<StoreCommits> {
    if conn.is_closed() {
        *conn = ctx.connect().await?;
    }
    let req = ctx.request(conn, Method::GET, "/metrics", Bytes::new())?;
    let (status, body) = conn.call(req).await.context("GET /metrics")?;
    if status != StatusCode::OK {
        bail!("GET /metrics: {status}");
    }
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .ok_or_else(|| anyhow!("/metrics has no {name}"))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {name}"))
    };
    Ok(StoreCommits {
        count: value("shoal_store_commit_duration_seconds_count")?,
        seconds: value("shoal_store_commit_duration_seconds_sum")?,
        txns: value("shoal_store_commit_batch_size_sum")?,
    })
}

/// Nearest-rank percentile of sorted microsecond samples, in ms.
fn percentile_ms(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

pub(crate) fn node_body(i: usize) -> Value {
    let name = format!("node-{:04}", i + 1);
    let res = json!({"cpu": "32", "memory": "128Gi", "pods": "110"});
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
            },
        },
        "status": {
            "capacity": res,
            "allocatable": res,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    })
}

fn pod_body(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {"containers": [{
            "name": "c",
            "image": "busybox:1.36",
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        }]},
    })
}

/// GET `path` and parse the 200 body.
pub(crate) async fn get_json(ctx: &Ctx, conn: &mut Conn, path: &str) -> Result<Value> {
    if conn.is_closed() {
        *conn = ctx.connect().await?;
    }
    let req = ctx.request(conn, Method::GET, path, Bytes::new())?;
    let (status, body) = conn
        .call(req)
        .await
        .with_context(|| format!("GET {path}"))?;
    if status != StatusCode::OK {
        bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    serde_json::from_slice(&body).with_context(|| format!("parsing the body of GET {path}"))
}

/// Poll the `default` plugin (setup only) until its status says Ready.
pub(crate) async fn wait_plugin_ready(ctx: &Ctx, conn: &mut Conn) -> Result<()> {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if conn.is_closed() {
            *conn = ctx.connect().await?;
        }
        let req = ctx.request(conn, Method::GET, PLUGIN_PATH, Bytes::new())?;
        match conn.call(req).await {
            Ok((StatusCode::OK, body)) => {
                let v: Value = serde_json::from_slice(&body).context("parsing the plugin")?;
                match v.pointer("/status/state").and_then(Value::as_str) {
                    Some("Ready") => return Ok(()),
                    Some("Failed") => bail!(
                        "plugin default is Failed: {}",
                        v.pointer("/status/reason").unwrap_or(&Value::Null)
                    ),
                    _ => last = format!("status {}", v.get("status").unwrap_or(&Value::Null)),
                }
            }
            Ok((status, body)) => last = format!("{status}: {}", String::from_utf8_lossy(&body)),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(POLL).await;
    }
    bail!("plugin default not Ready within {SETUP_TIMEOUT:?} (last: {last})")
}

// ---------------------------------------------------------------------------
// Concurrent creates.

pub(crate) struct Created {
    /// Create-request start of each object that answered 201, by index.
    starts: Vec<Option<Instant>>,
    /// The earliest create-request start.
    first: Option<Instant>,
    /// When the last create answered.
    end: Instant,
    pub(crate) ok: u64,
    pub(crate) errors: u64,
    /// Errors that were 5xx answers.
    pub(crate) server_errors: u64,
    pub(crate) elapsed: Duration,
}

#[derive(Default)]
struct ClientOut {
    starts: Vec<(usize, Instant)>,
    errors: u64,
    server_errors: u64,
}

/// Create `count` objects (bodies from `make(i)`) with one client per pooled connection.
pub(crate) async fn create_many<F>(
    ctx: &Arc<Ctx>,
    pool: &mut Vec<Conn>,
    label: &'static str,
    path: &'static str,
    count: usize,
    make: F,
) -> Result<Created>
where
    F: Fn(usize) -> Value + Send + Sync + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "  {label}: {}/{count} created",
                    done.load(Ordering::Relaxed)
                );
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in pool.drain(..) {
        let (ctx, make, next, done) = (ctx.clone(), make.clone(), next.clone(), done.clone());
        tasks.spawn(async move {
            let mut out = ClientOut::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let body = Bytes::from(make(i).to_string());
                let req = ctx.request(&conn, Method::POST, path, body)?;
                let t0 = Instant::now();
                match conn.call(req).await {
                    Ok((StatusCode::CREATED, _)) => out.starts.push((i, t0)),
                    Ok((status, body)) => {
                        out.errors += 1;
                        if status.is_server_error() {
                            out.server_errors += 1;
                        }
                        ctx.sample(|| {
                            format!(
                                "create {label} #{i}: {status}: {}",
                                String::from_utf8_lossy(&body)
                            )
                        });
                    }
                    Err(e) => {
                        out.errors += 1;
                        ctx.sample(|| format!("create {label} #{i}: {e:#}"));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                if conn.is_closed() {
                    conn = ctx
                        .connect()
                        .await
                        .context("reconnecting after the connection closed")?;
                }
            }
            Ok::<_, anyhow::Error>((conn, out))
        });
    }
    let mut created = Created {
        starts: vec![None; count],
        first: None,
        end: start,
        ok: 0,
        errors: 0,
        server_errors: 0,
        elapsed: Duration::ZERO,
    };
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok((conn, out)) => {
                pool.push(conn);
                created.errors += out.errors;
                created.server_errors += out.server_errors;
                for (i, t) in out.starts {
                    created.ok += 1;
                    created.starts[i] = Some(t);
                    created.first = Some(created.first.map_or(t, |f| f.min(t)));
                }
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    created.end = Instant::now();
    created.elapsed = created.end - start;
    progress.abort();
    if let Some(e) = failure {
        return Err(e.context(format!("creating {label}")));
    }
    Ok(created)
}

// ---------------------------------------------------------------------------
// The pod watch.

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: WatchObject,
}

#[derive(Deserialize, Default)]
struct WatchObject {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: Spec,
    /// Set on ERROR events (a Status).
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "resourceVersion")]
    resource_version: String,
}

#[derive(Deserialize, Default)]
struct Spec {
    #[serde(default, rename = "nodeName")]
    node_name: Option<String>,
}

/// What the watch saw of one `bench-<i>` pod.
#[derive(Default, Clone)]
struct PodSeen {
    node: Option<String>,
    /// When the watch first showed it with a nodeName.
    bound_at: Option<Instant>,
    /// Unbound → bound transitions.
    binds: u32,
    /// Bound to one node → bound to another.
    moves: u32,
    /// Bound → unbound.
    unbinds: u32,
    deleted: bool,
}

#[derive(Clone, Default)]
struct Progress {
    /// `bench-*` pods seen bound at least once.
    bound: usize,
    warmup_bound: bool,
}

struct Tracked {
    pods: Vec<PodSeen>,
    events: u64,
    error: Option<String>,
}

struct Watcher {
    progress: watch::Receiver<Progress>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Tracked>,
}

impl Watcher {
    /// Open the watch from `rv` (so nothing after the list is missed) and track it in a task.
    async fn start(ctx: Arc<Ctx>, rv: String, pods: usize) -> Result<Watcher> {
        let (conn, body) = open_watch(&ctx, &rv).await?;
        let (tx, rx) = watch::channel(Progress::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(track(ctx, conn, body, rv, pods, tx, stop_rx));
        Ok(Watcher {
            progress: rx,
            stop: stop_tx,
            task,
        })
    }

    async fn finish(self) -> Tracked {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(t) => t,
            Err(e) => Tracked {
                pods: Vec::new(),
                events: 0,
                error: Some(format!("watch task failed: {e}")),
            },
        }
    }
}

async fn open_watch(ctx: &Ctx, rv: &str) -> Result<(Conn, Incoming)> {
    let mut conn = ctx.connect().await?;
    let path = format!("{PODS_PATH}?watch=true&resourceVersion={rv}");
    let req = ctx.request(&conn, Method::GET, &path, Bytes::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), conn.send(req))
        .await
        .map_err(|_| anyhow!("no answer to the watch request within 30s"))??;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = resp.into_body().collect().await?.to_bytes();
        bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body));
    }
    Ok((conn, resp.into_body()))
}

/// Read watch events until stopped; resume from the last resourceVersion if the stream ends.
async fn track(
    ctx: Arc<Ctx>,
    // Held only to keep the connection (and so the stream) alive while reading.
    mut _conn: Conn,
    mut body: Incoming,
    mut rv: String,
    pods: usize,
    tx: watch::Sender<Progress>,
    mut stop: oneshot::Receiver<()>,
) -> Tracked {
    let mut t = Tracked {
        pods: vec![PodSeen::default(); pods],
        events: 0,
        error: None,
    };
    let mut progress = Progress::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut resumes = 0;
    loop {
        let frame = tokio::select! {
            _ = &mut stop => return t,
            f = body.frame() => f,
        };
        let ended = match frame {
            Some(Ok(f)) => {
                let Ok(data) = f.into_data() else { continue };
                let now = Instant::now();
                buf.extend_from_slice(&data);
                let before = (progress.bound, progress.warmup_bound);
                let mut consumed = 0;
                while let Some(nl) = buf[consumed..].iter().position(|b| *b == b'\n') {
                    let line = &buf[consumed..consumed + nl];
                    consumed += nl + 1;
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    t.events += 1;
                    match serde_json::from_slice::<WatchEvent>(line) {
                        Ok(ev) if ev.kind == "ERROR" => {
                            t.error = Some(format!(
                                "ERROR event: {}",
                                ev.object.message.unwrap_or_default()
                            ));
                            return t;
                        }
                        Ok(ev) => {
                            if !ev.object.metadata.resource_version.is_empty() {
                                rv.clone_from(&ev.object.metadata.resource_version);
                            }
                            observe(&mut t, &mut progress, ev, now);
                        }
                        Err(e) => {
                            t.error = Some(format!(
                                "unparsable watch line ({e}): {}",
                                String::from_utf8_lossy(line)
                            ));
                            return t;
                        }
                    }
                }
                buf.drain(..consumed);
                if (progress.bound, progress.warmup_bound) != before {
                    let _ = tx.send(progress.clone());
                }
                None
            }
            Some(Err(e)) => Some(format!("watch stream error: {e}")),
            None => Some("watch stream ended".to_string()),
        };
        if let Some(why) = ended {
            if resumes >= MAX_WATCH_RESUMES {
                t.error = Some(format!("{why}; gave up after {resumes} resumes"));
                return t;
            }
            resumes += 1;
            eprintln!("pod watch: {why}; resuming from resourceVersion {rv}");
            match open_watch(&ctx, &rv).await {
                Ok((c, b)) => {
                    _conn = c;
                    body = b;
                    buf.clear();
                }
                Err(e) => {
                    t.error = Some(format!("{why}; resuming failed: {e:#}"));
                    return t;
                }
            }
        }
    }
}

fn observe(t: &mut Tracked, progress: &mut Progress, ev: WatchEvent, now: Instant) {
    let name = ev.object.metadata.name;
    let node = ev.object.spec.node_name.filter(|n| !n.is_empty());
    if name == WARMUP_POD {
        progress.warmup_bound |= node.is_some();
        return;
    }
    let Some(i) = name
        .strip_prefix("bench-")
        .and_then(|s| s.parse::<usize>().ok())
    else {
        return;
    };
    let Some(p) = t.pods.get_mut(i) else { return };
    if ev.kind == "DELETED" {
        p.deleted = true;
        return;
    }
    match (&p.node, &node) {
        (None, Some(_)) => {
            p.binds += 1;
            if p.bound_at.is_none() {
                p.bound_at = Some(now);
                progress.bound += 1;
            }
        }
        (Some(a), Some(b)) if a != b => p.moves += 1,
        (Some(_), None) => p.unbinds += 1,
        _ => {}
    }
    p.node = node;
}
