//! `shoal-bench podstartup`: pod startup latency on a real node.
//!
//! Starts `shoal server` and `shoal agent` as two processes (so the agent's
//! RSS is its own) inside a network namespace the bench creates
//! (`shoal-bench-<pid>`, loopback up, deleted afterwards), so the agent's pod
//! network (bridge, veths) never touches the machine's. The image is
//! preloaded: the agent serves `busybox` from an unpacked root built from
//! /bin/busybox (`--image-dir`), so no pull is timed. Two phases, each timed
//! from the create request to the first watch event showing the pod
//! `Running`:
//!
//! 1. `--pods` pods created at `--rate` per second: p50, p99, max;
//! 2. after those are deleted, `--burst` pods created at once: time until all
//!    are Running, and p50/p99 of their own latencies.
//!
//! The agent's VmRSS is sampled throughout (last and peak). Every pod is
//! deleted at the end, leftovers (runc containers, sandboxes, mounts) are
//! removed, and both processes are stopped. Needs root, runc, iproute2 and a
//! static /bin/busybox.

use crate::common::{round, rss_mb, Conn, Ctx, Server};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const NS_PATH: &str = "/api/v1/namespaces/default";
const LABEL: &str = "app%3Dpodstartup";
const NODE: &str = "bench-node";

#[derive(clap::Args)]
pub struct Args {
    /// The `shoal` binary to benchmark [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Pods created at `--rate` per second in phase 1.
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Creates per second in phase 1.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Pods created at once in phase 2 (0 skips it).
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// The agent's `--pod-network` (`bridge` or `none`).
    #[arg(long, default_value = "bridge")]
    pod_network: String,
    /// Seconds each phase may take.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Internal: already inside the bench's network namespace.
    #[arg(long, hide = true)]
    in_netns: bool,
}

/// Runs the benchmark; returns the JSON line and whether the run completed.
pub async fn run(args: Args) -> Result<(String, bool)> {
    let bin = crate::common::resolve_bin(args.shoal.as_deref())?;
    if args.pods == 0 || args.rate <= 0.0 {
        bail!("--pods and --rate must be positive");
    }
    if args.in_netns {
        return inner(&bin, &args).await;
    }
    let ns = format!("shoal-bench-{}", std::process::id());
    sh("ip", &["netns", "add", &ns]).await?;
    let result = async {
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"]).await?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns])
            .arg(exe)
            .arg("podstartup")
            .arg("--in-netns")
            .arg("--shoal")
            .arg(&bin)
            .args(["--pods", &args.pods.to_string()])
            .args(["--rate", &args.rate.to_string()])
            .args(["--burst", &args.burst.to_string()])
            .args(["--pod-network", &args.pod_network])
            .args(["--timeout", &args.timeout.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let out = cmd.spawn()?.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .last()
            .ok_or_else(|| {
                anyhow!(
                    "the bench in the namespace printed nothing ({})",
                    out.status
                )
            })?
            .to_string();
        Ok::<_, anyhow::Error>((line, out.status.success()))
    }
    .await;
    if let Err(e) = sh("ip", &["netns", "delete", &ns]).await {
        eprintln!("removing network namespace {ns}: {e:#}");
    }
    result
}

async fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The part that runs inside the namespace.
async fn inner(bin: &Path, args: &Args) -> Result<(String, bool)> {
    let work = tempfile::Builder::new()
        .prefix("shoal-bench-podstartup-")
        .tempdir()?;
    let images = build_images(work.path())?;
    let mut server = Server::start(bin, "shoal-bench-podstartup-server-", &[]).await?;
    eprintln!("server ready (pid {}, {})", server.pid, server.addr);
    let agent_dir = work.path().join("agent");
    let agent = start_agent(bin, &server, work.path(), &agent_dir, &images, args).await;
    let mut out = json!({
        "bench": "podstartup",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "pods": args.pods,
        "rate_per_s": args.rate,
        "burst": args.burst,
        "pod_network": args.pod_network,
        "image": "busybox (preloaded, unpacked root)",
    });
    match agent {
        Ok(mut agent) => {
            eprintln!("agent ready (pid {})", agent.id().unwrap_or(0));
            let pid = agent.id().unwrap_or(0);
            let rss = Arc::new(Mutex::new((0.0f64, 0.0f64)));
            let sampler = {
                let rss = rss.clone();
                tokio::spawn(async move {
                    loop {
                        if let Ok(mb) = rss_mb(pid) {
                            let mut g = rss.lock().expect("rss lock");
                            g.0 = mb;
                            g.1 = g.1.max(mb);
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            let idle = rss_mb(pid).unwrap_or(0.0);
            let result = measure(&server, args).await;
            let (last, peak) = *rss.lock().expect("rss lock");
            sampler.abort();
            out["agent_rss_idle_mb"] = json!(round(idle, 1));
            out["agent_rss_mb"] = json!(round(last, 1));
            out["agent_rss_peak_mb"] = json!(round(peak, 1));
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
            // Every pod deleted (the agent stops its containers), then the agent.
            if let Err(e) = delete_all(&server, Duration::from_secs(args.timeout)).await {
                eprintln!("deleting pods: {e:#}");
                out["cleanup_error"] = json!(format!("{e:#}"));
            }
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(20), agent.wait())
                .await
                .is_err()
            {
                let _ = agent.kill().await;
            }
        }
        Err(e) => {
            eprintln!("agent failed: {e:#}");
            out["error"] = json!(format!("agent: {e:#}"));
        }
    }
    clean_node(&agent_dir).await;
    let crashed = server.exited();
    if let Err(e) = server.stop().await {
        eprintln!("stopping the server: {e:#}");
    }
    if let Some(st) = crashed {
        out["error"] = json!(format!("server exited during the run: {st}"));
    }
    let complete = out.get("error").is_none();
    Ok((out.to_string(), complete))
}

/// `<dir>/images/busybox/rootfs` from the host's static /bin/busybox.
fn build_images(dir: &Path) -> Result<PathBuf> {
    let busybox = std::fs::read("/bin/busybox")
        .context("reading /bin/busybox (apt-get install busybox-static)")?;
    if has_interpreter(&busybox) {
        bail!("/bin/busybox is dynamically linked; install busybox-static");
    }
    let images = dir.join("images");
    let root = images.join("busybox/rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::write(root.join("bin/busybox"), &busybox)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )?;
    }
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    std::fs::write(images.join("busybox/config.json"), r#"{"cmd": ["sh"]}"#)?;
    Ok(images)
}

/// Whether a 64-bit ELF file names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return true;
    }
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let o = phoff + i * size;
        elf.get(o..o + 4) == Some(&3u32.to_le_bytes()[..]) // PT_INTERP
    })
}

async fn start_agent(
    bin: &Path,
    server: &Server,
    work: &Path,
    data_dir: &Path,
    images: &Path,
    args: &Args,
) -> Result<Child> {
    let out = Command::new(bin)
        .args(["kubeconfig", "node", NODE, "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "shoal kubeconfig node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let kubeconfig = work.join("node.kubeconfig");
    std::fs::write(&kubeconfig, &out.stdout)?;
    let log = std::fs::File::create(work.join("agent.log"))?;
    let mut child = Command::new(bin)
        .arg("agent")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["--node-name", NODE, "--data-dir"])
        .arg(data_dir)
        .arg("--image-dir")
        .arg(images)
        .args(["--agent-port", "0", "--pod-network", &args.pod_network])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no agent stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if l.contains("ready") {
                return true;
            }
        }
        false
    })
    .await;
    if ready != Ok(true) {
        let _ = child.kill().await;
        let log = std::fs::read_to_string(work.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "agent did not get ready; log tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(child)
}

/// What the pod watch saw.
#[derive(Default)]
struct Seen {
    running: HashMap<String, Instant>,
    gone: HashMap<String, Instant>,
    error: Option<String>,
}

struct PodWatch {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    async fn start(ctx: Arc<Ctx>) -> Result<PodWatch> {
        let mut conn = ctx.connect().await?;
        let req = ctx.request(
            &conn,
            Method::GET,
            &format!("{NS_PATH}/pods?labelSelector={LABEL}&limit=1"),
            Bytes::new(),
        )?;
        let (status, body) = conn.call(req).await?;
        if status != StatusCode::OK {
            bail!("listing pods: {status}");
        }
        let list: Value = serde_json::from_slice(&body)?;
        let rv = list
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string();
        let path = format!("{NS_PATH}/pods?watch=true&labelSelector={LABEL}&resourceVersion={rv}");
        let req = ctx.request(&conn, Method::GET, &path, Bytes::new())?;
        let resp = conn.send(req).await?;
        if resp.status() != StatusCode::OK {
            bail!("watching pods: {}", resp.status());
        }
        let mut body = resp.into_body();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let changed = Arc::new(tokio::sync::Notify::new());
        let task = {
            let (seen, changed) = (seen.clone(), changed.clone());
            tokio::spawn(async move {
                let _conn = conn;
                let mut buf = Vec::new();
                loop {
                    let frame = match body.frame().await {
                        Some(Ok(f)) => f,
                        other => {
                            seen.lock().expect("seen lock").error =
                                Some(format!("pod watch ended: {other:?}"));
                            changed.notify_waiters();
                            return;
                        }
                    };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let now = Instant::now();
                    buf.extend_from_slice(&data);
                    while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=nl).collect();
                        let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                            continue;
                        };
                        let name = ev
                            .pointer("/object/metadata/name")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let mut s = seen.lock().expect("seen lock");
                        if ev["type"] == "DELETED" {
                            s.gone.entry(name).or_insert(now);
                        } else if ev.pointer("/object/status/phase") == Some(&json!("Running")) {
                            s.running.entry(name).or_insert(now);
                        }
                    }
                    changed.notify_waiters();
                }
            })
        };
        Ok(PodWatch {
            seen,
            changed,
            task,
        })
    }

    /// Wait until `f` holds for what was seen, or `deadline`.
    async fn wait(&self, deadline: Instant, what: &str, f: impl Fn(&Seen) -> bool) -> Result<()> {
        loop {
            let notified = self.changed.notified();
            {
                let s = self.seen.lock().expect("seen lock");
                if f(&s) {
                    return Ok(());
                }
                if let Some(e) = &s.error {
                    bail!("{e}");
                }
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                bail!("timed out waiting for {what}");
            }
        }
    }
}

fn pod_body(name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "podstartup"}},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "c", "image": "busybox", "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "3600"]
                }]
            }
        })
        .to_string(),
    )
}

/// Connections reused across creates (one request in flight per connection).
struct Pool {
    ctx: Arc<Ctx>,
    idle: tokio::sync::Mutex<Vec<Conn>>,
}

impl Pool {
    async fn create(&self, name: &str) -> Result<Instant> {
        let mut conn = match self.idle.lock().await.pop() {
            Some(c) if !c.is_closed() => c,
            _ => self.ctx.connect().await?,
        };
        let req = self.ctx.request(
            &conn,
            Method::POST,
            &format!("{NS_PATH}/pods"),
            pod_body(name),
        )?;
        let t = Instant::now();
        let (status, body) = conn.call(req).await?;
        if status != StatusCode::CREATED {
            bail!(
                "creating {name}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        self.idle.lock().await.push(conn);
        Ok(t)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn latencies_ms(created: &HashMap<String, Instant>, seen: &Seen) -> Vec<f64> {
    let mut v: Vec<f64> = created
        .iter()
        .filter_map(|(n, t)| {
            seen.running
                .get(n)
                .map(|r| r.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

async fn measure(server: &Server, args: &Args) -> Result<serde_json::Map<String, Value>> {
    let ctx = Arc::new(Ctx::new(
        server.addr,
        &server.data_dir.join("admin.kubeconfig"),
    )?);
    let mut control = ctx.connect().await?;
    crate::scheduler::wait_plugin_ready(&ctx, &mut control).await?;
    wait_node_ready(&ctx, &mut control).await?;
    let watch = PodWatch::start(ctx.clone()).await?;
    let pool = Arc::new(Pool {
        ctx: ctx.clone(),
        idle: tokio::sync::Mutex::new(Vec::new()),
    });
    let mut fig = serde_json::Map::new();
    let limit = Duration::from_secs(args.timeout);

    // Phase 1: paced creates.
    let names: Vec<String> = (0..args.pods).map(|i| format!("paced-{i}")).collect();
    let created = Arc::new(Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / args.rate)).into()).await;
        let (pool, created, name) = (pool.clone(), created.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let t = pool.create(&name).await?;
            created.lock().expect("created lock").insert(name, t);
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let create_s = t0.elapsed().as_secs_f64();
    watch
        .wait(Instant::now() + limit, "paced pods Running", |s| {
            names.iter().all(|n| s.running.contains_key(n))
        })
        .await?;
    let lat = latencies_ms(
        &created.lock().expect("created lock"),
        &watch.seen.lock().expect("seen lock"),
    );
    eprintln!(
        "phase 1: {} pods created in {create_s:.1}s; p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    fig.insert(
        "paced_p50_ms".into(),
        json!(round(percentile(&lat, 0.5), 1)),
    );
    fig.insert(
        "paced_p99_ms".into(),
        json!(round(percentile(&lat, 0.99), 1)),
    );
    fig.insert(
        "paced_max_ms".into(),
        json!(round(lat.last().copied().unwrap_or(0.0), 1)),
    );

    // The node holds 110 pods: clear phase 1 before the burst.
    delete_collection(&ctx).await?;
    watch
        .wait(Instant::now() + limit, "paced pods deleted", |s| {
            names.iter().all(|n| s.gone.contains_key(n))
        })
        .await?;
    eprintln!("phase 1 pods deleted");

    if args.burst > 0 {
        // Phase 2: a burst; connections opened beforehand so the burst is the creates.
        let names: Vec<String> = (0..args.burst).map(|i| format!("burst-{i}")).collect();
        let mut conns = Vec::new();
        for _ in 0..args.burst.min(50) {
            conns.push(ctx.connect().await?);
        }
        *pool.idle.lock().await = conns;
        let created = Arc::new(Mutex::new(HashMap::new()));
        let t0 = Instant::now();
        let tasks: Vec<_> = names
            .iter()
            .map(|name| {
                let (pool, created, name) = (pool.clone(), created.clone(), name.clone());
                tokio::spawn(async move {
                    let t = pool.create(&name).await?;
                    created.lock().expect("created lock").insert(name, t);
                    Ok::<_, anyhow::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let create_s = t0.elapsed().as_secs_f64();
        watch
            .wait(Instant::now() + limit, "burst pods Running", |s| {
                names.iter().all(|n| s.running.contains_key(n))
            })
            .await?;
        let seen = watch.seen.lock().expect("seen lock");
        let all = names
            .iter()
            .filter_map(|n| seen.running.get(n))
            .max()
            .map_or(0.0, |last| last.duration_since(t0).as_secs_f64());
        let lat = latencies_ms(&created.lock().expect("created lock"), &seen);
        eprintln!(
            "phase 2: {} pods created in {create_s:.2}s; all Running after {all:.2}s; p50 {:.0} ms, p99 {:.0} ms",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99)
        );
        fig.insert("burst_all_running_s".into(), json!(round(all, 2)));
        fig.insert("burst_create_s".into(), json!(round(create_s, 2)));
        fig.insert(
            "burst_p50_ms".into(),
            json!(round(percentile(&lat, 0.5), 1)),
        );
        fig.insert(
            "burst_p99_ms".into(),
            json!(round(percentile(&lat, 0.99), 1)),
        );
    }
    watch.task.abort();
    Ok(fig)
}

async fn wait_node_ready(ctx: &Ctx, conn: &mut Conn) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let req = ctx.request(
            conn,
            Method::GET,
            &format!("/api/v1/nodes/{NODE}"),
            Bytes::new(),
        )?;
        if let Ok((StatusCode::OK, body)) = conn.call(req).await {
            let v: Value = serde_json::from_slice(&body)?;
            let ready = v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
            if ready {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("node {NODE} not Ready within 60s")
}

async fn delete_collection(ctx: &Ctx) -> Result<()> {
    let mut conn = ctx.connect().await?;
    let req = ctx.request(
        &conn,
        Method::DELETE,
        &format!("{NS_PATH}/pods?labelSelector={LABEL}"),
        Bytes::new(),
    )?;
    let (status, body) = conn.call(req).await?;
    if !status.is_success() {
        bail!(
            "deleting pods: {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

/// Delete every bench pod and wait until the API has none left (the agent
/// removes each object after stopping its containers).
async fn delete_all(server: &Server, limit: Duration) -> Result<()> {
    let ctx = Ctx::new(server.addr, &server.data_dir.join("admin.kubeconfig"))?;
    delete_collection(&ctx).await?;
    let mut conn = ctx.connect().await?;
    let deadline = Instant::now() + limit;
    loop {
        let req = ctx.request(
            &conn,
            Method::GET,
            &format!("{NS_PATH}/pods?labelSelector={LABEL}"),
            Bytes::new(),
        )?;
        let (_, body) = conn.call(req).await?;
        let v: Value = serde_json::from_slice(&body)?;
        let left = v["items"].as_array().map_or(0, Vec::len);
        if left == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{left} pods still present");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Backstop after the agent stopped: remove any runc container, sandbox
/// process and rootfs mount it left behind.
async fn clean_node(agent_dir: &Path) {
    let runc_root = agent_dir.join("runc");
    for e in std::fs::read_dir(&runc_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force"])
            .arg(e.file_name())
            .stderr(Stdio::null())
            .status()
            .await;
    }
    for pod in std::fs::read_dir(agent_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let rec: Value = std::fs::read(pod.path().join("pod.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null);
        if let Some(pid) = rec["sandbox"]["pid"].as_i64() {
            // Only if it still is a `shoal pause` process.
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmd.windows(5).any(|w| w == b"pause") {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .await;
            }
        }
        for c in std::fs::read_dir(pod.path().join("containers"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(c.path().join("rootfs"))
                .stderr(Stdio::null())
                .status()
                .await;
        }
        eprintln!("cleaned up leftovers of pod dir {}", pod.path().display());
    }
}
