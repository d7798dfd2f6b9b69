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

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Concurrent clients in the high-concurrency phase (the `c64_*` figures).
const HIGH_CLIENTS: usize = 64;
/// How long one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How many non-201 bodies / transport errors to print to stderr.
const MAX_ERROR_SAMPLES: u64 = 5;
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
    let bin = match &args.shoal {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating the bench binary")?
            .parent()
            .ok_or_else(|| anyhow!("bench binary has no parent directory"))?
            .join("shoal"),
    };
    if !bin.is_file() {
        bail!("no shoal binary at {} (build it: cargo build --release -p shoal, or pass --shoal PATH)", bin.display());
    }
    let c1_creates = args.c1_creates.unwrap_or(args.creates / 10);

    let mut server = Server::start(&bin).await?;
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

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// VmRSS of `pid` in MiB.
fn rss_mb(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .ok_or_else(|| anyhow!("no VmRSS line for pid {pid}"))?;
    let kb: f64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow!("malformed VmRSS line: {line}"))?
        .parse()
        .with_context(|| format!("malformed VmRSS line: {line}"))?;
    Ok(kb / 1024.0)
}

// ---------------------------------------------------------------------------
// The server process.

struct Server {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    /// Holds the server's stderr log and data dir; removed on stop (or drop).
    tmp: Option<tempfile::TempDir>,
}

impl Server {
    async fn start(bin: &Path) -> Result<Server> {
        let tmp = tempfile::Builder::new()
            .prefix("shoal-bench-api-")
            .tempdir()
            .context("creating a temp dir")?;
        let data_dir = tmp.path().join("data");
        let log = tmp.path().join("server.log");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_file = std::fs::File::create(&log)?;
        let mut child = Command::new(bin)
            .arg("server")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            // Backstop only: the normal path sends SIGTERM and waits (see `stop`).
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let pid = child.id().ok_or_else(|| anyhow!("server exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no server stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut server = Server {
            child,
            pid,
            addr,
            data_dir,
            log,
            tmp: Some(tmp),
        };
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("ready") {
                    return Ok(true);
                }
            }
            Ok::<_, std::io::Error>(false)
        })
        .await;
        match ready {
            Ok(Ok(true)) => {}
            other => {
                let why = match other {
                    Ok(Ok(_)) => "closed stdout without a ready line".to_string(),
                    Ok(Err(e)) => format!("stdout read failed: {e}"),
                    Err(_) => "printed no ready line within 60s".to_string(),
                };
                server.dump_log();
                let _ = server.stop().await;
                bail!("shoal server {why}");
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(server)
    }

    /// The exit status, if the server has already exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.try_wait().ok().flatten();
        if st.is_some() {
            self.dump_log();
        }
        st
    }

    /// Print the tail of the server's stderr log to our stderr.
    fn dump_log(&self) {
        if let Ok(text) = std::fs::read_to_string(&self.log) {
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "--- last lines of the server log ---");
            for l in &lines[from..] {
                let _ = writeln!(err, "{l}");
            }
            let _ = writeln!(err, "---");
        }
    }

    /// SIGTERM by PID, wait (SIGKILL after 20s), then remove the temp dir.
    async fn stop(&mut self) -> Result<ExitStatus> {
        let status = if let Some(st) = self.child.try_wait()? {
            st
        } else {
            // `kill(1)` keeps this binary free of `unsafe` (libc::kill is an unsafe fn).
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &self.pid.to_string()])
                .status()
                .context("running kill -TERM")?;
            if !sent.success() {
                eprintln!("kill -TERM {} failed: {sent}", self.pid);
            }
            match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
                Ok(st) => st?,
                Err(_) => {
                    eprintln!("server did not exit within 20s of SIGTERM; sending SIGKILL");
                    self.dump_log();
                    self.child.start_kill()?;
                    self.child.wait().await?
                }
            }
        };
        if !status.success() {
            self.dump_log();
        }
        if let Some(tmp) = self.tmp.take() {
            let path = tmp.path().to_path_buf();
            tmp.close()
                .with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(status)
    }
}

// ---------------------------------------------------------------------------
// The HTTPS client.

/// What every client task shares.
struct Ctx {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    /// Next ConfigMap number, across all phases, so every name is unique.
    seq: AtomicU64,
    /// Error samples printed so far.
    samples: AtomicU64,
}

impl Ctx {
    fn new(addr: SocketAddr, kubeconfig: &Path) -> Result<Ctx> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("reading {}", kubeconfig.display()))?;
        let kc: serde_yaml::Value =
            serde_yaml::from_str(&text).context("parsing the admin kubeconfig")?;
        let field =
            |v: &serde_yaml::Value, section: &str, inner: &str, key: &str| -> Result<Vec<u8>> {
                let b64 = v[section][0][inner][key]
                    .as_str()
                    .ok_or_else(|| anyhow!("kubeconfig has no {section}[0].{inner}.{key}"))?;
                base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .with_context(|| format!("decoding {section}[0].{inner}.{key}"))
            };
        let ca = field(&kc, "clusters", "cluster", "certificate-authority-data")?;
        let cert = field(&kc, "users", "user", "client-certificate-data")?;
        let key = field(&kc, "users", "user", "client-key-data")?;
        if let Some(url) = kc["clusters"][0]["cluster"]["server"].as_str() {
            if url != format!("https://{addr}") {
                eprintln!(
                    "note: kubeconfig names {url}; the bench connects to https://{addr} only"
                );
            }
        }

        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.map_err(|e| anyhow!("CA PEM: {e:?}"))?)?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("client certificate PEM: {e:?}"))?;
        let key =
            PrivateKeyDer::from_pem_slice(&key).map_err(|e| anyhow!("client key PEM: {e:?}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Ctx {
            addr,
            connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            seq: AtomicU64::new(0),
            samples: AtomicU64::new(0),
        })
    }

    /// Print an error sample to stderr, at most `MAX_ERROR_SAMPLES` in all.
    fn sample(&self, msg: impl FnOnce() -> String) {
        if self.samples.fetch_add(1, Ordering::Relaxed) < MAX_ERROR_SAMPLES {
            eprintln!("error: {}", msg());
        }
    }

    async fn connect(&self) -> Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let tls = self
            .connector
            .connect(ServerName::from(self.addr.ip()), tcp)
            .await
            .context("TLS handshake")?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .context("HTTP/2 handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(Conn::H1(send))
        }
    }

    /// A request to this server: absolute URI for HTTP/2 (it fills :authority), origin-form plus Host for HTTP/1.1.
    fn request(
        &self,
        conn: &Conn,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>> {
        let builder = match conn {
            Conn::H2(_) => Request::builder().uri(format!("https://{}{path_and_query}", self.addr)),
            Conn::H1(_) => Request::builder()
                .uri(path_and_query)
                .header(http::header::HOST, self.addr.to_string()),
        };
        let mut builder = builder
            .method(method)
            .header(http::header::ACCEPT, "application/json");
        if !body.is_empty() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        Ok(builder.body(Full::new(body))?)
    }
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Another handle on the same connection (HTTP/2 only).
    fn share(&self) -> Option<Conn> {
        match self {
            Conn::H2(s) => Some(Conn::H2(s.clone())),
            Conn::H1(_) => None,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> hyper::Result<http::Response<Incoming>> {
        match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// Send and read the whole response body, within `REQUEST_TIMEOUT`.
    async fn call(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
        tokio::time::timeout(REQUEST_TIMEOUT, async {
            let resp = self.send(req).await?;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        })
        .await
        .map_err(|_| anyhow!("no response within {REQUEST_TIMEOUT:?}"))?
        .map_err(Into::into)
    }
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

/// Percent-encode everything but RFC 3986 unreserved characters.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
