//! `shoal-bench admission`: the latency admission plugins add to a request.
//!
//! Starts `shoal server`, then times pod creates over HTTPS (one client, one
//! request in flight) in namespaces that 0, 1, 5 and 10 admission plugins
//! apply to. Each series' plugins select their namespace with a
//! `namespaceSelector`, so plugins of other series never run; every plugin
//! reviews every pod create of its namespace. Rust series alternate
//! `deny-latest` (validating) and `defaults` (mutating); the Python series
//! uses `require-labels` (componentize-py) when `--python-plugin` names it.
//!
//! Creates use `dryRun=All` by default: the whole admission chain runs, but
//! nothing is written, so the store's fsync does not drown microseconds of
//! plugin time in milliseconds of disk (`--durable` writes them).
//!
//! Also times one plugin call alone, in-process (instance reused, as the
//! server's pool does), to separate the Wasm call from the HTTP path.

use crate::common::{resolve_bin, round, Ctx, Server};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Plugin counts measured in each series.
const COUNTS: [usize; 4] = [0, 1, 5, 10];

#[derive(clap::Args)]
pub struct Args {
    /// The `shoal` binary [default: `shoal` next to this binary].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Measured pod creates per point.
    #[arg(long, default_value_t = 2_000)]
    requests: u64,
    /// Unmeasured creates before each point.
    #[arg(long, default_value_t = 200)]
    warmup: u64,
    /// Store the pods (fsync per create) instead of `dryRun=All`.
    #[arg(long)]
    durable: bool,
    /// The deny-latest component [default: target/wasm-plugins/wasm32-wasip2/release/deny_latest.wasm].
    #[arg(long)]
    deny_latest: Option<PathBuf>,
    /// The defaults component [default: next to deny_latest.wasm].
    #[arg(long)]
    defaults: Option<PathBuf>,
    /// The Python require-labels component (plugins/require-labels-py/build.sh); the Python series is skipped without it.
    #[arg(long)]
    python_plugin: Option<PathBuf>,
}

/// `target/wasm-plugins/wasm32-wasip2/release/<file>` from the shoal binary's directory.
fn wasm_default(bin: &Path, file: &str) -> PathBuf {
    let target = bin
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    target.join("wasm-plugins/wasm32-wasip2/release").join(file)
}

struct Series {
    name: &'static str,
    /// (plugin file, mutating?, config) for the i-th plugin.
    plugin: Box<dyn Fn(usize) -> (PathBuf, bool, Value)>,
}

pub async fn run(args: Args) -> Result<String> {
    let bin = resolve_bin(args.shoal.as_deref())?;
    let deny = args
        .deny_latest
        .clone()
        .unwrap_or_else(|| wasm_default(&bin, "deny_latest.wasm"));
    let defaults = args
        .defaults
        .clone()
        .unwrap_or_else(|| wasm_default(&bin, "defaults.wasm"));
    for f in [&deny, &defaults] {
        if !f.is_file() {
            bail!(
                "{} not found: build the plugins first (cargo build --release -p shoal-host) or pass --deny-latest/--defaults",
                f.display()
            );
        }
    }
    let mut series = vec![Series {
        name: "rust",
        plugin: Box::new(move |i| {
            if i % 2 == 0 {
                (deny.clone(), false, json!({}))
            } else {
                (
                    defaults.clone(),
                    true,
                    json!({"cpu": "100m", "memory": "64Mi", "team": "bench"}),
                )
            }
        }),
    }];
    let mut notes = Vec::new();
    match &args.python_plugin {
        Some(p) if p.is_file() => {
            let p = p.clone();
            series.push(Series {
                name: "python",
                plugin: Box::new(move |_| (p.clone(), false, json!({"labels": ["team", "app"]}))),
            });
        }
        Some(p) => bail!("--python-plugin {}: no such file", p.display()),
        None => notes.push(
            "python series skipped: no --python-plugin (build plugins/require-labels-py/build.sh)"
                .to_string(),
        ),
    }

    // The plugin call alone, in-process.
    let mut alone = serde_json::Map::new();
    alone.insert(
        "rust_deny_latest".into(),
        call_alone(
            &wasm_default(&bin, "deny_latest.wasm"),
            &json!({}),
            args.requests,
        )
        .await?,
    );
    if let Some(p) = args.python_plugin.as_ref().filter(|p| p.is_file()) {
        alone.insert(
            "python_require_labels".into(),
            call_alone(
                p,
                &json!({"labels": ["team", "app"]}),
                args.requests.min(2_000),
            )
            .await?,
        );
    }

    let mut server = Server::start(&bin, "shoal-bench-admission-", &[]).await?;
    let result = measure(&args, &bin, &server, &series).await;
    let stop = server.stop().await;
    let mut figures = result?;
    if let Err(e) = stop {
        eprintln!("stopping the server: {e:#}");
    }
    figures["plugin_call_alone_us"] = Value::Object(alone);
    figures["notes"] = json!(notes);
    Ok(figures.to_string())
}

/// p50/p99 of one review call on a reused instance, in µs.
async fn call_alone(file: &Path, config: &Value, n: u64) -> Result<Value> {
    use shoal_host::plugin::{PluginKind, PluginRuntime, RuntimeConfig};
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let runtime = PluginRuntime::new(RuntimeConfig::default())?;
    let loaded = runtime.load("bench", PluginKind::Admission, &bytes)?;
    let mut inst = loaded.instantiate_admission().await?;
    inst.configure(&config.to_string()).await?;
    let request = json!({
        "uid": "1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "name": "p", "namespace": "default", "operation": "CREATE",
        "userInfo": {"username": "admin", "groups": ["system:masters"]},
        "object": pod("p"), "oldObject": null, "dryRun": true,
    })
    .to_string();
    let mut lat = Vec::with_capacity(n as usize);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let r = inst.review(&request).await?;
        if i >= n / 10 {
            lat.push(t.elapsed());
        }
        if !r.allowed {
            bail!("{} denied the bench pod: {:?}", file.display(), r.message);
        }
    }
    lat.sort();
    Ok(json!({"p50": round(pct(&lat, 0.5), 1), "p99": round(pct(&lat, 0.99), 1)}))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1e6
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"team": "bench", "app": "bench"}},
        // Bound to a node that does not exist, so the scheduler leaves it alone.
        "spec": {"nodeName": "bench-node-absent", "containers": [{"name": "c", "image": "busybox:1.36"}]},
    })
}

/// `shoal plugin install --kind admission ...`.
fn install(
    bin: &Path,
    kubeconfig: &Path,
    name: &str,
    file: &Path,
    mutating: bool,
    config: &Value,
    ns_label: &str,
) -> Result<()> {
    let mut cmd = std::process::Command::new(bin);
    cmd.args(["plugin", "install", "--kind", "admission", "--name", name])
        .arg(file)
        .args(["--config", &config.to_string()])
        .args(["--namespace-selector", &format!("bench={ns_label}")])
        .arg("--kubeconfig")
        .arg(kubeconfig);
    if mutating {
        cmd.arg("--mutating");
    }
    let out = cmd.output().context("running shoal plugin install")?;
    if !out.status.success() {
        bail!(
            "installing {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn measure(args: &Args, bin: &Path, server: &Server, series: &[Series]) -> Result<Value> {
    let kubeconfig = server.data_dir.join("admin.kubeconfig");
    let ctx = Ctx::new(server.addr, &kubeconfig)?;
    let mut conn = ctx.connect().await?;
    let mut out = json!({
        "bench": "admission",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "requests_per_point": args.requests,
        "dry_run": !args.durable,
    });
    let mut seq = 0u64;
    for s in series {
        let ns = format!("bench-{}", s.name);
        let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"bench": s.name}}});
        let req = ctx.request(
            &conn,
            Method::POST,
            "/api/v1/namespaces",
            Bytes::from(body.to_string()),
        )?;
        let (code, text) = conn.call(req).await?;
        if code != StatusCode::CREATED {
            bail!(
                "creating namespace {ns}: {code} {}",
                String::from_utf8_lossy(&text)
            );
        }
        let mut installed = 0;
        let mut points = Vec::new();
        for n in COUNTS {
            while installed < n {
                let (file, mutating, config) = (s.plugin)(installed);
                install(
                    bin,
                    &kubeconfig,
                    &format!("{}-{installed}", s.name),
                    &file,
                    mutating,
                    &config,
                    s.name,
                )?;
                installed += 1;
            }
            let path = if args.durable {
                format!("/api/v1/namespaces/{ns}/pods")
            } else {
                format!("/api/v1/namespaces/{ns}/pods?dryRun=All")
            };
            let mut lat = Vec::with_capacity(args.requests as usize);
            for i in 0..args.warmup + args.requests {
                seq += 1;
                let body = Bytes::from(pod(&format!("p{seq}")).to_string());
                let req = ctx.request(&conn, Method::POST, &path, body)?;
                let t = Instant::now();
                let (code, text) = conn.call(req).await?;
                let d = t.elapsed();
                if code != StatusCode::CREATED {
                    bail!(
                        "pod create with {n} {} plugins: {code} {}",
                        s.name,
                        String::from_utf8_lossy(&text)
                    );
                }
                if i >= args.warmup {
                    lat.push(d);
                }
            }
            lat.sort();
            let (p50, p99) = (pct(&lat, 0.5), pct(&lat, 0.99));
            eprintln!(
                "{} series, {n} plugins: p50 {p50:.0} µs, p99 {p99:.0} µs",
                s.name
            );
            points.push((n, p50, p99));
        }
        let base = points[0].1;
        let per_plugin: Vec<f64> = points[1..]
            .iter()
            .map(|(n, p50, _)| (p50 - base) / *n as f64)
            .collect();
        out[s.name] = json!({
            "p50_us": points.iter().map(|(n, p, _)| (n.to_string(), json!(round(*p, 1)))).collect::<serde_json::Map<_, _>>(),
            "p99_us": points.iter().map(|(n, _, p)| (n.to_string(), json!(round(*p, 1)))).collect::<serde_json::Map<_, _>>(),
            // (p50 with n plugins - p50 with none) / n, for n = 1, 5, 10.
            "p50_added_per_plugin_us": per_plugin.iter().map(|x| round(*x, 1)).collect::<Vec<_>>(),
        });
    }
    Ok(out)
}
