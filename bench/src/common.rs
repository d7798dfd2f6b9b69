//! Shared benchmark plumbing: starting and stopping a `shoal server` on a
//! fresh temporary data dir and free loopback port, and an HTTPS client
//! (hyper 1 over tokio-rustls, admin client certificate from the server's
//! generated kubeconfig).

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
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long one request may take before it counts as an error.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How many non-201 bodies / transport errors to print to stderr.
pub(crate) const MAX_ERROR_SAMPLES: u64 = 5;

/// The `shoal` binary: `--shoal PATH`, or `shoal` next to this binary (target/release/shoal).
pub(crate) fn resolve_bin(arg: Option<&Path>) -> Result<PathBuf> {
    let bin = match arg {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()
            .context("locating the bench binary")?
            .parent()
            .ok_or_else(|| anyhow!("bench binary has no parent directory"))?
            .join("shoal"),
    };
    if !bin.is_file() {
        bail!("no shoal binary at {} (build it: cargo build --release -p shoal, or pass --shoal PATH)", bin.display());
    }
    Ok(bin)
}

pub(crate) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// CPU time (user + system, in seconds) used so far by process `pid`, or
/// only by its threads named `thread` (as in /proc/PID/task/TID/comm).
pub(crate) fn cpu_seconds(pid: u32, thread: Option<&str>) -> Result<f64> {
    let ticks = |stat: &str| -> Result<u64> {
        // Fields after "(comm)": state is field 3, utime 14, stime 15.
        let rest = stat
            .rsplit_once(')')
            .ok_or_else(|| anyhow!("malformed stat line: {stat}"))?
            .1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let get = |i: usize| -> Result<u64> {
            f.get(i - 3)
                .ok_or_else(|| anyhow!("short stat line: {stat}"))?
                .parse()
                .with_context(|| format!("malformed stat line: {stat}"))
        };
        Ok(get(14)? + get(15)?)
    };
    let total = match thread {
        None => ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?)?,
        Some(name) => {
            let mut sum = 0;
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                let dir = task?.path();
                // Threads may exit while we look: skip the ones that vanished.
                let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                    continue;
                };
                if comm.trim_end() == name {
                    if let Ok(stat) = std::fs::read_to_string(dir.join("stat")) {
                        sum += ticks(&stat)?;
                    }
                }
            }
            sum
        }
    };
    Ok(total as f64 / clock_ticks_per_s())
}

/// Bytes process `pid` has caused to be written to storage (/proc/PID/io write_bytes).
pub(crate) fn io_write_bytes(pid: u32) -> Result<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .with_context(|| format!("reading /proc/{pid}/io"))?;
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .ok_or_else(|| anyhow!("no write_bytes in /proc/{pid}/io"))?
        .trim()
        .parse()
        .context("malformed write_bytes line")
}

/// USER_HZ, from `getconf CLK_TCK` (100 if that fails).
fn clock_ticks_per_s() -> f64 {
    static HZ: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|hz| *hz > 0.0)
            .unwrap_or(100.0)
    })
}

/// `text` without ANSI escape sequences (CSI `ESC [ ... letter`).
pub(crate) fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// VmRSS of `pid` in MiB.
pub(crate) fn rss_mb(pid: u32) -> Result<f64> {
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

pub(crate) struct Server {
    child: Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) data_dir: PathBuf,
    log: PathBuf,
    /// Holds the server's stderr log and data dir; removed on stop (or drop).
    tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Start `bin server` with `extra` arguments; the temp dir is named `prefix*`.
    pub(crate) async fn start(bin: &Path, prefix: &str, extra: &[&str]) -> Result<Server> {
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
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
            // Room for 65,536 nodes per family: the benches make up to 5,000
            // simulated nodes and each gets its podCIDRs from node IPAM.
            .args(["--cluster-cidr", "10.0.0.0/8,fd42::/48"])
            .args(extra)
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
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.try_wait().ok().flatten();
        if st.is_some() {
            self.dump_log();
        }
        st
    }

    /// The server's stderr log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Print the tail of the server's stderr log to our stderr.
    pub(crate) fn dump_log(&self) {
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
    pub(crate) async fn stop(&mut self) -> Result<ExitStatus> {
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
pub(crate) struct Ctx {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    /// Next object number, across all phases of a run, so every name is unique.
    pub(crate) seq: AtomicU64,
    /// Error samples printed so far.
    samples: AtomicU64,
}

impl Ctx {
    pub(crate) fn new(addr: SocketAddr, kubeconfig: &Path) -> Result<Ctx> {
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
    pub(crate) fn sample(&self, msg: impl FnOnce() -> String) {
        if self.samples.fetch_add(1, Ordering::Relaxed) < MAX_ERROR_SAMPLES {
            eprintln!("error: {}", msg());
        }
    }

    pub(crate) async fn connect(&self) -> Result<Conn> {
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
    pub(crate) fn request(
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

pub(crate) enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Another handle on the same connection (HTTP/2 only).
    pub(crate) fn share(&self) -> Option<Conn> {
        match self {
            Conn::H2(s) => Some(Conn::H2(s.clone())),
            Conn::H1(_) => None,
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }

    pub(crate) async fn send(
        &mut self,
        req: Request<Full<Bytes>>,
    ) -> hyper::Result<http::Response<Incoming>> {
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
    pub(crate) async fn call(&mut self, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes)> {
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

/// Percent-encode everything but RFC 3986 unreserved characters.
pub(crate) fn query_escape(s: &str) -> String {
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
