//! `shoal-bench api`: the API server benchmark.
//!
//! Starts `shoal server` on a fresh temporary data dir and a free loopback
//! port, then measures durable ConfigMap creates over HTTPS (client
//! certificate from the generated admin kubeconfig) at 1 and at 64
//! concurrent clients, and the server's RSS when idle and once the store
//! holds `--fill` ConfigMaps. Every request goes to 127.0.0.1 only, and
//! every loop is bounded by a request count.
//!
//! Client: hyper 1 connections over tokio-rustls (ring), ALPN offering h2 and
//! http/1.1; HTTP/2 is used whenever the server picks it. By default each
//! client task owns one connection (64 clients = 64 HTTP/2 connections, one
//! request in flight on each), which keeps clients independent and mirrors
//! 64 separate API consumers. `--conns K` instead multiplexes the clients
//! over a pool of K HTTP/2 connections (client i uses connection i % K), the
//! way a single client-go process shares one connection. Connections are
//! opened before a phase's clock starts, so TLS handshakes are not timed.

use crate::common::{query_escape, resolve_bin, round, rss_mb, Conn, Ctx, Server};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent clients in the high-concurrency phase (the `c64_*` figures).
const HIGH_CLIENTS: usize = 64;
/// Page size of the final LIST that counts the stored ConfigMaps.
const LIST_PAGE: usize = 1000;

#[derive(clap::Args)]
pub struct Args {
    /// The `shoal` binary to benchmark [default: `shoal` next to this binary, i.e. target/release/shoal].
    #[arg(long)]
    shoal: Option<PathBuf>,
    /// Creates measured at 64 concurrent clients.
    #[arg(long, default_value_t = 20_000)]
    creates: u64,
    /// Creates measured at 1 client [default: --creates / 10].
    #[arg(long)]
    c1_creates: Option<u64>,
    /// ConfigMaps the store holds (in total, all phases included) when the second RSS figure is taken.
    #[arg(long, default_value_t = 100_000)]
    fill: u64,
    /// Unmeasured warm-up creates at 64 clients before the measured phases.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// HTTP/2 connections shared by the clients of a phase; 0 = one connection per client.
    #[arg(long, default_value_t = 0)]
    conns: usize,
}

pub async fn run(args: Args) -> Result<String> {
    let started = Instant::now();
    let bin = resolve_bin(args.shoal.as_deref())?;
    let c1_creates = args.c1_creates.unwrap_or(args.creates / 10);

    let mut server = Server::start(&bin, "shoal-bench-api-", &[]).await?;
    let result = measure(&args, c1_creates, &server).await;
    let crashed = server.exited();
    let stop = server.stop().await;
    let (mut figures, mut errors) = result?;
    if let Some(st) = crashed {
        eprintln!("server exited during the benchmark: {st}");
        errors += 1;
    }
    match stop {
        Ok(st) if st.success() => {}
        Ok(st) => eprintln!("server exited with {st} after SIGTERM"),
        Err(e) => eprintln!("stopping the server: {e:#}"),
    }
    figures["errors"] = json!(errors);
    eprintln!(
        "api bench finished in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(figures.to_string())
}

/// Runs the phases against a started server; returns the figures and the error count.
async fn measure(args: &Args, c1_creates: u64, server: &Server) -> Result<(Value, u64)> {
    let idle_rss_mb = rss_mb(server.pid)?;
    eprintln!(
        "server ready (pid {}, {}), idle RSS {idle_rss_mb:.1} MB",
        server.pid, server.addr
    );
    let ctx = Arc::new(Ctx::new(
        server.addr,
        &server.data_dir.join("admin.kubeconfig"),
    )?);

    let warm = run_phase(&ctx, "warm-up", HIGH_CLIENTS, args.warmup, args.conns).await?;
    let c1 = run_phase(&ctx, "1 client", 1, c1_creates, args.conns).await?;
    let c64 = run_phase(&ctx, "64 clients", HIGH_CLIENTS, args.creates, args.conns).await?;
    let so_far = warm.ok + c1.ok + c64.ok;
    let fill = run_phase(
        &ctx,
        "fill",
        HIGH_CLIENTS,
        args.fill.saturating_sub(so_far),
        args.conns,
    )
    .await?;
    let rss_after_fill_mb = rss_mb(server.pid)?;
    let created = so_far + fill.ok;
    eprintln!("store filled: {created} creates answered 201, RSS {rss_after_fill_mb:.1} MB");

    let mut errors = warm.errors + c1.errors + c64.errors + fill.errors;
    let stored = match count_stored(&ctx).await {
        Ok(n) => {
            if n != created {
                eprintln!("LIST counts {n} bench ConfigMaps but {created} creates answered 201");
            }
            json!(n)
        }
        Err(e) => {
            eprintln!("counting stored ConfigMaps failed: {e:#}");
            errors += 1;
            Value::Null
        }
    };
    let figures = json!({
        "bench": "api",
        "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "c1_creates_per_s": round(c1.rate(), 1),
        "c1_p50_ms": round(c1.percentile_ms(0.50), 3),
        "c1_p99_ms": round(c1.percentile_ms(0.99), 3),
        "c64_creates_per_s": round(c64.rate(), 1),
        "c64_p50_ms": round(c64.percentile_ms(0.50), 3),
        "c64_p99_ms": round(c64.percentile_ms(0.99), 3),
        "idle_rss_mb": round(idle_rss_mb, 1),
        "rss_after_fill_mb": round(rss_after_fill_mb, 1),
        "stored": stored,
        "errors": errors,
    });
    Ok((figures, errors))
}

// ---------------------------------------------------------------------------
// Create phases.

#[derive(Default)]
struct Phase {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    /// Latencies of the 201 answers, in microseconds, sorted.
    lat_us: Vec<u64>,
}

impl Phase {
    fn rate(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    /// Nearest-rank percentile of the 201 latencies, in ms.
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.lat_us.is_empty() {
            return 0.0;
        }
        let rank = ((p * self.lat_us.len() as f64).ceil() as usize).clamp(1, self.lat_us.len());
        self.lat_us[rank - 1] as f64 / 1000.0
    }
}

/// `count` creates spread over `clients` concurrent clients, each with one request in flight.
async fn run_phase(
    ctx: &Arc<Ctx>,
    label: &str,
    clients: usize,
    count: u64,
    conns: usize,
) -> Result<Phase> {
    if count == 0 {
        return Ok(Phase::default());
    }
    // Open the connections before the clock starts.
    let pool_size = if conns == 0 {
        clients
    } else {
        conns.min(clients)
    };
    let mut pool = Vec::with_capacity(pool_size);
    for _ in 0..pool_size {
        pool.push(ctx.connect().await?);
    }
    let mut handles = Vec::with_capacity(clients);
    for i in 0..clients {
        let conn = if pool_size == clients {
            pool.pop().expect("one connection per client")
        } else {
            pool[i % pool_size]
                .share()
                .ok_or_else(|| anyhow!("the server did not pick HTTP/2; --conns needs it"))?
        };
        handles.push(conn);
    }
    drop(pool);

    let issued = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let progress = {
        let (done, label) = (done.clone(), label.to_string());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                eprintln!(
                    "  {label}: {n}/{count} ({:.0}/s)",
                    n as f64 / start.elapsed().as_secs_f64()
                );
            }
        })
    };
    let mut tasks = tokio::task::JoinSet::new();
    for conn in handles {
        let (ctx, issued, done) = (ctx.clone(), issued.clone(), done.clone());
        tasks.spawn(async move { client(ctx, conn, issued, done, count).await });
    }
    let mut phase = Phase::default();
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(c) => {
                phase.ok += c.ok;
                phase.errors += c.errors;
                phase.lat_us.extend(c.lat_us);
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    phase.elapsed = start.elapsed();
    progress.abort();
    if let Some(e) = failure {
        return Err(e.context(format!("{label} phase")));
    }
    phase.lat_us.sort_unstable();
    eprintln!(
        "{label}: {} creates by {clients} client(s) in {:.2}s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        phase.ok,
        phase.elapsed.as_secs_f64(),
        phase.rate(),
        phase.percentile_ms(0.50),
        phase.percentile_ms(0.99),
        phase.errors
    );
    Ok(phase)
}

/// One client: creates ConfigMaps one after another until the phase has issued `count`.
async fn client(
    ctx: Arc<Ctx>,
    mut conn: Conn,
    issued: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    count: u64,
) -> Result<Phase> {
    let mut mine = Phase::default();
    while issued.fetch_add(1, Ordering::Relaxed) < count {
        let n = ctx.seq.fetch_add(1, Ordering::Relaxed);
        let body = json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": format!("bench-{n}")},
            "data": {"k": "v"},
        });
        let req = ctx.request(
            &conn,
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Bytes::from(body.to_string()),
        )?;
        let t0 = Instant::now();
        match conn.call(req).await {
            Ok((StatusCode::CREATED, _)) => {
                mine.ok += 1;
                mine.lat_us.push(t0.elapsed().as_micros() as u64);
            }
            Ok((status, body)) => {
                mine.errors += 1;
                ctx.sample(|| {
                    format!(
                        "create bench-{n}: {status}: {}",
                        String::from_utf8_lossy(&body)
                    )
                });
            }
            Err(e) => {
                mine.errors += 1;
                ctx.sample(|| format!("create bench-{n}: {e:#}"));
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
        if conn.is_closed() {
            // The connection died (server crash, GOAWAY, ...): reconnect, or give up on the phase.
            conn = ctx
                .connect()
                .await
                .context("reconnecting after the connection closed")?;
        }
    }
    Ok(mine)
}

/// Count the `bench-*` ConfigMaps in `default` with a paged LIST.
async fn count_stored(ctx: &Ctx) -> Result<u64> {
    let mut conn = ctx.connect().await?;
    let mut token = String::new();
    let mut n = 0u64;
    loop {
        let mut path = format!("/api/v1/namespaces/default/configmaps?limit={LIST_PAGE}");
        if !token.is_empty() {
            path.push_str("&continue=");
            path.push_str(&query_escape(&token));
        }
        let req = ctx.request(&conn, Method::GET, &path, Bytes::new())?;
        let (status, body) = conn.call(req).await?;
        if status != StatusCode::OK {
            bail!("LIST {path}: {status}: {}", String::from_utf8_lossy(&body));
        }
        let list: Value = serde_json::from_slice(&body).context("parsing the LIST body")?;
        let items = list["items"]
            .as_array()
            .ok_or_else(|| anyhow!("LIST body has no items array"))?;
        n += items
            .iter()
            .filter(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("bench-"))
            })
            .count() as u64;
        match list["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_string(),
            _ => return Ok(n),
        }
    }
}
