//! `shoal-bench dns`: queries per second of the agent's cluster DNS.
//!
//! The real server code (`shoal_agent::dns`: the index fed with Service and
//! EndpointSlice objects, hickory-server's UDP listener, our request
//! handler) serves a zone of `--services` ClusterIP services plus
//! `--headless` headless services with `--endpoints` endpoints each, on
//! 127.0.0.1. The server runs on ONE tokio current-thread runtime in a
//! thread of its own, so it uses at most one core; its CPU time is read
//! from `/proc/thread-self/stat` in that thread before and after each phase.
//!
//! The load generator (the main multi-threaded runtime) keeps `--window`
//! queries outstanding on each of `--sockets` UDP sockets and stops after
//! `--queries` answers or `--seconds`, whichever comes first. Phases: A
//! queries of existing service names (answer checked: NOERROR, one
//! record), and names that do not exist (NXDOMAIN checked). A query not
//! answered within a second counts as lost.

use anyhow::{bail, Result};
use serde_json::{json, Value};
use shoal_agent::dns::index::{Index, Zone};
use shoal_agent::dns::server::{serve, DnsHandler};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

#[derive(clap::Args)]
pub struct Args {
    /// ClusterIP services in the zone.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Headless services in the zone (their pods' records too).
    #[arg(long, default_value_t = 100)]
    headless: usize,
    /// Endpoints per headless service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Answers per phase (upper bound).
    #[arg(long, default_value_t = 300_000)]
    queries: u64,
    /// Time per phase (upper bound), seconds.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Client UDP sockets.
    #[arg(long, default_value_t = 4)]
    sockets: usize,
    /// Outstanding queries per socket.
    #[arg(long, default_value_t = 32)]
    window: usize,
}

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": ip, "clusterIPs": [ip],
                    "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}})
}

/// The zone: services spread over 10 namespaces.
fn build_index(a: &Args) -> Result<(Index, Vec<String>)> {
    let mut idx = Index::new(Zone::new("cluster.local")?);
    let mut names = Vec::new();
    for i in 0..a.services {
        let ns = format!("ns{}", i % 10);
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        idx.apply_service(serde_json::from_value(service(&ns, &name, &ip))?);
        names.push(format!("{name}.{ns}.svc.cluster.local."));
    }
    for i in 0..a.headless {
        let ns = format!("ns{}", i % 10);
        let name = format!("hl-{i}");
        idx.apply_service(serde_json::from_value(service(&ns, &name, "None"))?);
        let eps: Vec<Value> = (0..a.endpoints)
            .map(|e| {
                json!({"addresses": [format!("10.{}.{}.{}", 100 + i / 250, i % 250, e + 1)],
                       "hostname": format!("{name}-{e}"), "conditions": {"ready": true}})
            })
            .collect();
        idx.apply_slice(serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-x"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps,
        }))?);
    }
    Ok((idx, names))
}

/// A query for `name`, type A, with the id bytes left to fill in.
fn encode(name: &str) -> Vec<u8> {
    let mut q = vec![0, 0, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// CPU seconds this thread has used (utime + stime from /proc/thread-self/stat).
fn thread_cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields after the command: state is [0], utime is [11], stime [12]; clock ticks of 1/100 s.
    (tick(11) + tick(12)) / 100.0
}

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    wrong: AtomicU64,
    lost: AtomicU64,
}

/// One phase: the queries (pre-encoded), the rcode and answer count expected.
async fn phase(
    a: &Args,
    server: SocketAddr,
    queries: Arc<Vec<Vec<u8>>>,
    rcode: u8,
    answers: u16,
    cpu: &dyn Fn() -> f64,
) -> Result<Value> {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let cpu0 = cpu();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..a.sockets {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        sock.connect(server).await?;
        let window = Arc::new(Semaphore::new(a.window));
        let sent_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; 65536]));
        let (tx_sock, tx_window, tx_sent, tx_stop, qs) = (
            sock.clone(),
            window.clone(),
            sent_at.clone(),
            stop.clone(),
            queries.clone(),
        );
        let sender = tokio::spawn(async move {
            let mut i: usize = s * 7919;
            let mut id: u16 = 0;
            while !tx_stop.load(Ordering::Relaxed) {
                let Ok(p) = tx_window.acquire().await else {
                    return;
                };
                p.forget();
                let mut q = qs[i % qs.len()].clone();
                i += 1;
                id = id.wrapping_add(1);
                q[..2].copy_from_slice(&id.to_be_bytes());
                tx_sent.lock().unwrap()[id as usize] = Some(Instant::now());
                if tx_sock.send(&q).await.is_err() {
                    return;
                }
            }
        });
        let (tally, stop, lat, max) = (tally.clone(), stop.clone(), latencies.clone(), a.queries);
        let window_size = a.window;
        let receiver = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            let mut mine = Vec::new();
            let mut last = Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await {
                    Ok(Ok(n)) if n >= 12 => {
                        let id = u16::from_be_bytes([buf[0], buf[1]]);
                        last = Instant::now();
                        if let Some(t) = sent_at.lock().unwrap()[id as usize].take() {
                            mine.push(t.elapsed().as_micros() as u32);
                        }
                        let ok = buf[3] & 0x0f == rcode
                            && u16::from_be_bytes([buf[6], buf[7]]) == answers;
                        if !ok {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        let total = tally.answered.fetch_add(1, Ordering::Relaxed) + 1;
                        if total >= max || Instant::now() >= deadline {
                            stop.store(true, Ordering::Relaxed);
                        }
                        window.add_permits(1);
                    }
                    Ok(_) => window.add_permits(1),
                    Err(_) => {
                        // Nothing for a second: whatever is outstanding is lost.
                        let outstanding = window_size - window.available_permits();
                        if stop.load(Ordering::Relaxed) {
                            tally.lost.fetch_add(outstanding as u64, Ordering::Relaxed);
                            window.close();
                            break;
                        }
                        tally.lost.fetch_add(outstanding as u64, Ordering::Relaxed);
                        window.add_permits(outstanding);
                    }
                }
                if stop.load(Ordering::Relaxed) && window.available_permits() >= window_size {
                    window.close();
                    break;
                }
            }
            lat.lock().unwrap().extend(mine);
            last
        });
        tasks.push((sender, receiver));
    }
    // The phase ends at the last answer (not after the loss timeout).
    let mut end = start;
    for (s, r) in tasks {
        end = end.max(r.await?);
        s.abort();
    }
    let elapsed = (end - start).as_secs_f64().max(1e-6);
    let server_cpu = cpu() - cpu0;
    let answered = tally.answered.load(Ordering::Relaxed);
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(json!({
        "answered": answered,
        "wrong_answers": tally.wrong.load(Ordering::Relaxed),
        "lost": tally.lost.load(Ordering::Relaxed),
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "qps": (answered as f64 / elapsed).round(),
        "server_cpu_seconds": (server_cpu * 100.0).round() / 100.0,
        "qps_per_server_cpu_second": if server_cpu > 0.0 { (answered as f64 / server_cpu).round() } else { 0.0 },
        "latency_us": {"p50": pct(0.5), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0)},
    }))
}

/// Run the benchmark; returns the JSON line.
pub async fn run(a: Args) -> Result<String> {
    if a.sockets == 0 || a.window == 0 || a.window > 60_000 {
        bail!("--sockets must be at least 1 and --window between 1 and 60000");
    }
    let t = Instant::now();
    let (idx, names) = build_index(&a)?;
    let build_ms = t.elapsed().as_secs_f64() * 1000.0;
    let names_indexed = idx.records().len();
    // The server: one current-thread runtime on a thread of its own.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
    let (cpu_tx, mut cpu_rx) =
        tokio::sync::mpsc::unbounded_channel::<std::sync::mpsc::Sender<f64>>();
    let records = idx.records();
    let server_thread = std::thread::Builder::new()
        .name("dns-server".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = addr_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(async move {
                let server = match serve(
                    DnsHandler::new(records, None),
                    &["127.0.0.1:0".parse().unwrap()],
                    false,
                ) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = addr_tx.send(Ok(server.addrs[0]));
                let run = tokio::spawn(server.run());
                // Answer CPU-time requests from this (the server's) thread until told to stop.
                while let Some(reply) = cpu_rx.recv().await {
                    let _ = reply.send(thread_cpu());
                }
                run.abort();
            });
        })?;
    let addr = addr_rx.recv()?.map_err(anyhow::Error::msg)?;
    let cpu = {
        let cpu_tx = cpu_tx.clone();
        move || {
            let (tx, rx) = std::sync::mpsc::channel();
            let _ = cpu_tx.send(tx);
            rx.recv_timeout(Duration::from_secs(5)).unwrap_or(0.0)
        }
    };
    let existing: Arc<Vec<Vec<u8>>> = Arc::new(names.iter().map(|n| encode(n)).collect());
    let missing: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..1000)
            .map(|i| encode(&format!("nope-{i}.ns{}.svc.cluster.local.", i % 10)))
            .collect(),
    );
    eprintln!(
        "dns: {} names indexed in {build_ms:.1} ms; server on {addr}",
        names_indexed
    );
    let a_phase = phase(&a, addr, existing, 0, 1, &cpu).await?;
    eprintln!("dns: A {a_phase}");
    let nx_phase = phase(&a, addr, missing, 3, 0, &cpu).await?;
    eprintln!("dns: NXDOMAIN {nx_phase}");
    // The server thread ends when every CPU-time requester is gone.
    drop(cpu);
    drop(cpu_tx);
    let _ = server_thread.join();
    Ok(json!({
        "bench": "dns",
        "services": a.services,
        "headless_services": a.headless,
        "endpoints_per_headless": a.endpoints,
        "names_indexed": names_indexed,
        "index_build_ms": (build_ms * 10.0).round() / 10.0,
        "server_threads": 1,
        "client": {"sockets": a.sockets, "window": a.window, "max_queries": a.queries, "max_seconds": a.seconds},
        "a_existing": a_phase,
        "nxdomain": nx_phase,
        "target_qps": 20000,
    })
    .to_string())
}
