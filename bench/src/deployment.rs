//! `shoal-bench deployment`: one Deployment of R replicas, end to end.
//!
//! One fresh `shoal server`:
//!
//! 1. wait until the built-in `default` scheduler plugin is `Ready` (setup);
//! 2. create N simulated Node objects through the API (no agents) (setup);
//! 3. open a watch on the `app=bench` pods of `default` from a list's
//!    resourceVersion (setup);
//! 4. create one apps/v1 Deployment with `replicas: R` (timed from the start
//!    of that create request): the Deployment controller makes a ReplicaSet,
//!    the ReplicaSet controller makes the pods, the scheduler binds them. The
//!    watch records when each pod is first seen (created) and first seen with
//!    `spec.nodeName` set (bound), until all R are bound or `--timeout` runs
//!    out.
//!
//! Figures: seconds until all R pods were seen created and bound, distinct
//! nodes used, and over the same window (Deployment create request → last
//! bind seen) the CPU of the server process (all threads, including exited
//! ones), of its thread named `scheduler`, the rest (`server − scheduler`:
//! API, controllers, informers, store writer, ...), a per-thread-name
//! breakdown of the threads alive at the end, and this process's own CPU
//! (it shares the machine). Every request goes to 127.0.0.1 only; every loop
//! is bounded by a count or a deadline.

use crate::common::{cpu_seconds, round, strip_ansi, Conn, Ctx, Server};
use crate::scheduler::{create_many, get_json, node_body, wait_plugin_ready, CLIENTS, PLUGIN_PATH};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

const NS_PATH: &str = "/api/v1/namespaces/default";
const DEPLOY_NAME: &str = "bench";
/// Times the pod watch is resumed (from its last resourceVersion) if it ends early.
const MAX_WATCH_RESUMES: u32 = 5;

#[derive(clap::Args)]
pub struct Args {
    /// The `shoal` binary to benchmark [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 1000)]
    replicas: usize,
    /// Simulated nodes (32 CPU, 128Gi, 110 pods each).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Seconds to wait, from the Deployment create, for every pod to be bound.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Copy the server's stderr log to this file.
    #[arg(long)]
    log_file: Option<PathBuf>,
}

/// Runs the benchmark; returns the JSON line and whether the run completed.
pub async fn run(args: Args) -> Result<(String, bool)> {
    let bin = crate::common::resolve_bin(args.shoal.as_deref())?;
    if args.replicas == 0 || args.nodes == 0 {
        bail!("--replicas and --nodes must be positive");
    }
    let mut server = Server::start(&bin, "shoal-bench-deployment-", &[]).await?;
    eprintln!("server ready (pid {}, {})", server.pid, server.addr);
    let result = measure(&server, &args).await;
    let crashed = server.exited();

    let log = strip_ansi(&server.log_text());
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    if !noisy.is_empty() {
        eprintln!("server log has {} WARN/ERROR lines, e.g.:", noisy.len());
        for l in noisy.iter().take(8) {
            eprintln!("  {l}");
        }
    }
    if let Some(path) = &args.log_file {
        if let Err(e) = std::fs::write(path, &log) {
            eprintln!("saving the server log to {}: {e}", path.display());
        }
    }
    match server.stop().await {
        Ok(st) if st.success() => {}
        Ok(st) => eprintln!("server exited with {st} after SIGTERM"),
        Err(e) => eprintln!("stopping the server: {e:#}"),
    }

    let mut out = json!({
        "bench": "deployment",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "replicas": args.replicas,
        "nodes": args.nodes,
    });
    match result {
        Ok(fig) => {
            for (k, v) in fig {
                out[k] = v;
            }
        }
        Err(e) => {
            eprintln!("run failed: {e:#}");
            out["error"] = json!(format!("{e:#}"));
        }
    }
    out["server_warn_lines"] = json!(noisy.len());
    if let Some(st) = crashed {
        out["error"] = json!(format!("server exited during the run: {st}"));
    }
    let complete = out.get("error").is_none();
    Ok((out.to_string(), complete))
}

async fn measure(server: &Server, args: &Args) -> Result<serde_json::Map<String, Value>> {
    let ctx = Arc::new(Ctx::new(
        server.addr,
        &server.data_dir.join("admin.kubeconfig"),
    )?);
    let mut control = ctx.connect().await?;
    let mut errors = 0u64;

    // Setup 1: the default scheduler plugin is Ready.
    let t = Instant::now();
    wait_plugin_ready(&ctx, &mut control).await?;
    eprintln!(
        "plugin default Ready after {:.2}s ({PLUGIN_PATH})",
        t.elapsed().as_secs_f64()
    );

    // Setup 2: the nodes.
    let mut pool = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS.min(args.nodes) {
        pool.push(ctx.connect().await?);
    }
    let made = create_many(
        &ctx,
        &mut pool,
        "nodes",
        "/api/v1/nodes",
        args.nodes,
        node_body,
    )
    .await?;
    eprintln!(
        "created {} nodes in {:.2}s, {} errors",
        made.ok,
        made.elapsed.as_secs_f64(),
        made.errors
    );
    if made.errors > 0 {
        bail!(
            "{} of {} node creates failed ({} with 5xx)",
            made.errors,
            args.nodes,
            made.server_errors
        );
    }
    drop(pool);

    // Setup 3: the pod watch, from a list's resourceVersion.
    let list = get_json(
        &ctx,
        &mut control,
        &format!("{NS_PATH}/pods?labelSelector=app%3Dbench&limit=1"),
    )
    .await?;
    let rv = list
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("pod list has no metadata.resourceVersion: {list}"))?
        .to_string();
    let watcher = Watcher::start(ctx.clone(), rv).await?;
    let mut progress = watcher.progress.clone();
    // Let the server settle after the node creates before taking the CPU baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Timed: the Deployment create, until every pod is bound.
    let before = Cpu::now(server.pid);
    let t0 = Instant::now();
    let req = ctx.request(
        &control,
        Method::POST,
        "/apis/apps/v1/namespaces/default/deployments",
        Bytes::from(deployment_body(args.replicas).to_string()),
    )?;
    let (status, body) = control.call(req).await?;
    let create_ms = t0.elapsed().as_secs_f64() * 1000.0;
    if status != StatusCode::CREATED {
        bail!(
            "creating the Deployment: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    eprintln!(
        "Deployment created ({create_ms:.1} ms); waiting for {} pods",
        args.replicas
    );
    let want = args.replicas;
    let deadline = tokio::time::Instant::from_std(t0 + Duration::from_secs(args.timeout));
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    let mut failure = None;
    let mut created_all: Option<Duration> = None;
    loop {
        let p = progress.borrow().clone();
        if created_all.is_none() && p.created >= want {
            created_all = Some(t0.elapsed());
        }
        if p.bound >= want {
            break;
        }
        tokio::select! {
            r = progress.changed() => if r.is_err() {
                failure = Some(format!(
                    "the pod watch ended with {} created, {} of {want} bound", p.created, p.bound
                ));
                break;
            },
            _ = tick.tick() => eprintln!(
                "  {:.1}s: {} created, {} bound",
                t0.elapsed().as_secs_f64(), p.created, p.bound
            ),
            _ = tokio::time::sleep_until(deadline) => {
                failure = Some(format!(
                    "only {} created and {} of {want} bound within {}s of the Deployment create",
                    p.created, p.bound, args.timeout
                ));
                break;
            }
        }
    }
    let after = Cpu::now(server.pid);
    let tracked = watcher.finish().await;
    if let Some(e) = &tracked.error {
        eprintln!("pod watch: {e}");
        errors += 1;
    }

    // Figures, from the watch's own timestamps (not from when this loop woke).
    let since = |t: Instant| t.saturating_duration_since(t0).as_secs_f64();
    let first_created = tracked.pods.values().map(|p| p.seen_at).min();
    let mut created_at: Vec<Instant> = tracked.pods.values().map(|p| p.seen_at).collect();
    created_at.sort_unstable();
    let mut bound_at: Vec<Instant> = tracked.pods.values().filter_map(|p| p.bound_at).collect();
    bound_at.sort_unstable();
    let created_all_s = (created_at.len() >= want).then(|| since(created_at[want - 1]));
    let bound_all_s = (bound_at.len() >= want).then(|| since(bound_at[want - 1]));
    if created_all.is_some() && created_all_s.is_none() {
        eprintln!("note: progress saw all pods created but the final tally did not");
    }
    let nodes_used: HashSet<&str> = tracked
        .pods
        .values()
        .filter_map(|p| p.node.as_deref())
        .collect();
    let per_node_max = {
        let mut per: HashMap<&str, usize> = HashMap::new();
        for n in tracked.pods.values().filter_map(|p| p.node.as_deref()) {
            *per.entry(n).or_default() += 1;
        }
        per.values().copied().max().unwrap_or(0)
    };
    let moved = tracked.pods.values().filter(|p| p.moves > 0).count();
    let deleted = tracked.pods.values().filter(|p| p.deleted).count();

    let mut r = serde_json::Map::new();
    r.insert(
        "created_all_s".into(),
        json!(created_all_s.map(|s| round(s, 3))),
    );
    r.insert(
        "bound_all_s".into(),
        json!(bound_all_s.map(|s| round(s, 3))),
    );
    r.insert(
        "first_pod_created_s".into(),
        json!(first_created.map(|t| round(since(t), 3))),
    );
    r.insert(
        "first_pod_bound_s".into(),
        json!(bound_at.first().map(|t| round(since(*t), 3))),
    );
    r.insert("pods_created".into(), json!(created_at.len()));
    r.insert("pods_bound".into(), json!(bound_at.len()));
    r.insert("distinct_nodes".into(), json!(nodes_used.len()));
    r.insert("max_pods_per_node".into(), json!(per_node_max));
    r.insert("pods_moved".into(), json!(moved));
    r.insert("pods_deleted".into(), json!(deleted));
    r.insert("deployment_create_ms".into(), json!(round(create_ms, 1)));
    r.insert("watch_events".into(), json!(tracked.events));
    // CPU over [Deployment create request, last bind seen (or timeout)].
    let window = after.at.saturating_duration_since(before.at).as_secs_f64();
    let d = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    let server_cpu = d(after.server, before.server);
    let sched_cpu = d(after.scheduler, before.scheduler);
    r.insert("cpu_window_s".into(), json!(round(window, 3)));
    r.insert(
        "server_cpu_s".into(),
        json!(server_cpu.map(|c| round(c, 2))),
    );
    r.insert(
        "scheduler_thread_cpu_s".into(),
        json!(sched_cpu.map(|c| round(c, 2))),
    );
    r.insert(
        "non_scheduler_cpu_s".into(),
        json!(d(server_cpu, sched_cpu).map(|c| round(c, 2))),
    );
    let mut by_name = serde_json::Map::new();
    for (name, a) in &after.by_name {
        let b = before.by_name.get(name).copied().unwrap_or(0.0);
        by_name.insert(name.clone(), json!(round(a - b, 2)));
    }
    r.insert("server_cpu_s_by_thread_name".into(), Value::Object(by_name));
    r.insert(
        "bench_cpu_s".into(),
        json!(d(after.bench, before.bench).map(|c| round(c, 2))),
    );

    // What the controllers reported.
    match get_json(
        &ctx,
        &mut control,
        &format!("/apis/apps/v1/namespaces/default/deployments/{DEPLOY_NAME}"),
    )
    .await
    {
        Ok(v) => {
            r.insert(
                "deployment_status_replicas".into(),
                v.pointer("/status/replicas")
                    .cloned()
                    .unwrap_or(Value::Null),
            );
        }
        Err(e) => {
            errors += 1;
            eprintln!("reading the Deployment back: {e:#}");
        }
    }
    match get_json(
        &ctx,
        &mut control,
        "/apis/apps/v1/namespaces/default/replicasets",
    )
    .await
    {
        Ok(v) => {
            let n = v["items"].as_array().map_or(0, Vec::len);
            r.insert("replicasets".into(), json!(n));
        }
        Err(e) => {
            errors += 1;
            eprintln!("listing ReplicaSets: {e:#}");
        }
    }

    eprintln!(
        "created all {} after {:?}s, bound all after {:?}s, {} nodes used; server CPU {:?}s (scheduler thread {:?}s)",
        want,
        created_all_s.map(|s| round(s, 2)),
        bound_all_s.map(|s| round(s, 2)),
        nodes_used.len(),
        server_cpu.map(|c| round(c, 2)),
        sched_cpu.map(|c| round(c, 2)),
    );
    if let Some(f) = failure {
        errors += 1;
        r.insert("error".into(), json!(f));
    }
    r.insert("errors".into(), json!(errors));
    Ok(r)
}

fn deployment_body(replicas: usize) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": DEPLOY_NAME, "labels": {"app": "bench"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "bench"}},
            "template": {
                "metadata": {"labels": {"app": "bench"}},
                "spec": {"containers": [{
                    "name": "c",
                    "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }]},
            },
        },
    })
}

// ---------------------------------------------------------------------------
// Server CPU, by thread.

struct Cpu {
    at: Instant,
    /// The whole process (including threads that have exited).
    server: Option<f64>,
    /// Threads named `scheduler`.
    scheduler: Option<f64>,
    /// Live threads, summed per name (/proc/PID/task/TID/comm).
    by_name: BTreeMap<String, f64>,
    bench: Option<f64>,
}

impl Cpu {
    fn now(pid: u32) -> Cpu {
        let mut names = HashSet::new();
        if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for task in dir.flatten() {
                if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
                    names.insert(comm.trim_end().to_string());
                }
            }
        }
        let by_name = names
            .into_iter()
            .filter_map(|n| Some((n.clone(), cpu_seconds(pid, Some(&n)).ok()?)))
            .collect();
        Cpu {
            at: Instant::now(),
            server: cpu_seconds(pid, None).ok(),
            scheduler: cpu_seconds(pid, Some("scheduler")).ok(),
            by_name,
            bench: cpu_seconds(std::process::id(), None).ok(),
        }
    }
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

/// What the watch saw of one pod.
struct PodSeen {
    /// When the watch first showed it.
    seen_at: Instant,
    /// When the watch first showed it with a nodeName.
    bound_at: Option<Instant>,
    node: Option<String>,
    /// Bound to one node → bound to another (or unbound).
    moves: u32,
    deleted: bool,
}

#[derive(Clone, Default)]
struct Progress {
    created: usize,
    bound: usize,
}

struct Tracked {
    pods: HashMap<String, PodSeen>,
    events: u64,
    error: Option<String>,
}

struct Watcher {
    progress: watch::Receiver<Progress>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Tracked>,
}

impl Watcher {
    async fn start(ctx: Arc<Ctx>, rv: String) -> Result<Watcher> {
        let (conn, body) = open_watch(&ctx, &rv).await?;
        let (tx, rx) = watch::channel(Progress::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(track(ctx, conn, body, rv, tx, stop_rx));
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
                pods: HashMap::new(),
                events: 0,
                error: Some(format!("watch task failed: {e}")),
            },
        }
    }
}

async fn open_watch(ctx: &Ctx, rv: &str) -> Result<(Conn, Incoming)> {
    let mut conn = ctx.connect().await?;
    let path = format!("{NS_PATH}/pods?watch=true&labelSelector=app%3Dbench&resourceVersion={rv}");
    let req = ctx.request(&conn, Method::GET, &path, Bytes::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), conn.send(req))
        .await
        .map_err(|_| anyhow!("no answer to the watch request within 30s"))?
        .context("sending the watch request")?;
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
    tx: watch::Sender<Progress>,
    mut stop: oneshot::Receiver<()>,
) -> Tracked {
    let mut t = Tracked {
        pods: HashMap::new(),
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
                let before = (progress.created, progress.bound);
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
                if (progress.created, progress.bound) != before {
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
    if name.is_empty() {
        return;
    }
    let node = ev.object.spec.node_name.filter(|n| !n.is_empty());
    let p = t.pods.entry(name).or_insert_with(|| {
        progress.created += 1;
        PodSeen {
            seen_at: now,
            bound_at: None,
            node: None,
            moves: 0,
            deleted: false,
        }
    });
    if ev.kind == "DELETED" {
        p.deleted = true;
        return;
    }
    match (&p.node, &node) {
        (None, Some(_)) if p.bound_at.is_none() => {
            p.bound_at = Some(now);
            progress.bound += 1;
        }
        (Some(a), Some(b)) if a != b => p.moves += 1,
        (Some(_), None) => p.moves += 1,
        _ => {}
    }
    p.node = node;
}
