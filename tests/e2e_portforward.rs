//! End to end: `kubectl port-forward` through the host to a real runc pod.
//!
//! A `shoal server` and a `shoal agent` (busybox image built from Debian's
//! busybox-static) run a pod serving a file with busybox `httpd` on port 8080.
//! The real kubectl 1.32 forwards to it over WebSocket-tunnelled SPDY (its
//! default) and over plain SPDY (`KUBECTL_PORT_FORWARD_WEBSOCKETS=false`);
//! the Python client's `v4.channel.k8s.io` protocol is spoken directly.
//!
//! Needs root, runc, a static /bin/busybox and kubectl; skips otherwise.

mod common;

use common::Server;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const KUBECTL: &str = "kubectl";
const PAGE: &str = "hello from the pod over port-forward";

fn unsupported() -> Option<String> {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("not running as root".into());
    }
    let runs = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !runs("runc", "--version") {
        return Some("runc is not installed (apt-get install runc)".into());
    }
    if !runs(KUBECTL, "version") && !runs(KUBECTL, "help") {
        return Some("kubectl is not installed".into());
    }
    match std::fs::read("/bin/busybox") {
        Ok(b) if !common::has_interpreter(&b) => None,
        _ => Some("a static /bin/busybox is missing (apt-get install busybox-static)".into()),
    }
}

/// A child process killed (by its pid) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Server, agent and the pod's node state, cleaned up on drop.
struct Cluster {
    server: Server,
    agent: Option<Proc>,
    tmp: tempfile::TempDir,
}

impl Cluster {
    fn start(node: &str) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(&tmp.path().join("server"));
        let images = common::build_images(tmp.path(), &[]);
        let out = Command::new(SHOAL)
            .args(["kubeconfig", "node", node, "--data-dir"])
            .arg(&server.data_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let node_kc = tmp.path().join("node.kubeconfig");
        std::fs::write(&node_kc, &out.stdout).unwrap();
        // Loopback-only pods where the agent offers it: port-forward reaches
        // the pod through its own namespace's loopback, not the pod network.
        let help = Command::new(SHOAL)
            .args(["agent", "--help"])
            .output()
            .unwrap();
        let no_net = String::from_utf8_lossy(&help.stdout).contains("--pod-network");
        let log = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
        let mut cmd = Command::new(SHOAL);
        cmd.arg("agent")
            .arg("--kubeconfig")
            .arg(&node_kc)
            .args(["--node-name", node, "--data-dir"])
            .arg(tmp.path().join("agent"))
            .arg("--image-dir")
            .arg(&images);
        if no_net {
            cmd.args(["--pod-network", "none"]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("ready") {
                    let _ = tx.send(());
                }
            }
        });
        let agent = Proc(child);
        rx.recv_timeout(Duration::from_secs(60))
            .expect("agent printed no ready line");
        Cluster {
            server,
            agent: Some(agent),
            tmp,
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.agent.take();
        // Remove the pod's containers and sandbox the agent left running.
        let agent_dir = self.tmp.path().join("agent");
        common::clean_node(&agent_dir);
    }
}

/// Create the httpd pod and wait until it runs.
async fn start_web_pod(cluster: &Cluster) {
    let pods: Api<Pod> = Api::namespaced(cluster.server.client().await, "default");
    let script = format!(
        "mkdir -p /www && echo '{PAGE}' > /www/index.html && exec httpd -f -p 8080 -h /www"
    );
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": "busybox",
                                 "command": ["sh", "-c", script]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let p = pods.get("web").await.unwrap();
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Running" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod web not Running: {:?}",
            p.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A running `kubectl port-forward`, with the local port it printed.
struct PortForward {
    proc: Proc,
    local_port: u16,
    stderr: PathBuf,
}

impl PortForward {
    fn start(cluster: &Cluster, remote: u16, websockets: bool, tag: &str) -> PortForward {
        let stderr = cluster.tmp.path().join(format!("kubectl-{tag}.err"));
        let mut child = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&cluster.server.kubeconfig)
            .args(["port-forward", "pod/web", &format!(":{remote}")])
            .env(
                "KUBECTL_PORT_FORWARD_WEBSOCKETS",
                if websockets { "true" } else { "false" },
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&stderr).unwrap()))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // "Forwarding from 127.0.0.1:41234 -> 8080"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    if let Some(port) = rest.split_whitespace().next().and_then(|p| p.parse().ok())
                    {
                        let _ = tx.send(port);
                    }
                }
            }
        });
        let proc = Proc(child);
        let local_port: u16 = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "kubectl printed no local port; stderr: {}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        PortForward {
            proc,
            local_port,
            stderr,
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// One HTTP/1.0 GET over a fresh local connection: (status line, body).
async fn http_get(port: u16) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
        .await?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut resp))
        .await
        .map_err(|_| std::io::Error::other("timed out"))??;
    Ok(String::from_utf8_lossy(&resp).into_owned())
}

fn assert_page(resp: &str) {
    assert!(
        resp.starts_with("HTTP/1.") && resp.contains(" 200 "),
        "{resp}"
    );
    assert!(resp.contains(PAGE), "{resp}");
}

/// Two connections open at once, requests sent on both before either reply
/// is read: each gets the whole page.
async fn two_concurrent_gets(port: u16) {
    let mut a = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut b = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    a.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    b.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let read = |mut s: tokio::net::TcpStream| async move {
        let mut v = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut v))
            .await
            .expect("timed out")
            .unwrap();
        String::from_utf8_lossy(&v).into_owned()
    };
    let (ra, rb) = tokio::join!(read(a), read(b));
    assert_page(&ra);
    assert_page(&rb);
}

/// A TLS client config from the admin kubeconfig (CA and client certificate).
fn tls_config(kubeconfig: &Path) -> Arc<rustls::ClientConfig> {
    let kc: serde_yaml::Value =
        serde_yaml::from_slice(&std::fs::read(kubeconfig).unwrap()).unwrap();
    let b64 = |v: &serde_yaml::Value| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let ca = b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"]);
    let cert = b64(&kc["users"][0]["user"]["client-certificate-data"]);
    let key = b64(&kc["users"][0]["user"]["client-key-data"]);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls_pemfile::certs(&mut &cert[..])
        .map(Result::unwrap)
        .collect();
    let key = rustls_pemfile::private_key(&mut &key[..]).unwrap().unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    Arc::new(cfg)
}

/// Open a `v4.channel.k8s.io` port-forward WebSocket through the host, as the
/// official Python client does.
async fn v4_session(
    cluster: &Cluster,
    ports: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let port = cluster.server.port();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls_config(&cluster.server.kubeconfig));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let url =
        format!("wss://127.0.0.1:{port}/api/v1/namespaces/default/pods/web/portforward?{ports}");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    let (ws, resp) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("websocket upgrade");
    assert_eq!(
        resp.headers().get("sec-websocket-protocol").unwrap(),
        "v4.channel.k8s.io"
    );
    ws
}

/// Over the channel protocol: GET on port 8080 (channel 0) while port 9999
/// (channels 2/3) has nothing listening. Returns (data, per-channel errors).
async fn v4_get(cluster: &Cluster) -> (String, Vec<String>) {
    let mut ws = v4_session(cluster, "ports=8080&ports=9999").await;
    let mut announced = Vec::new();
    let mut data = Vec::new();
    let mut errors = vec![String::new(); 2];
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => break,
            Err(_) => panic!(
                "channel session timed out; data so far: {:?}",
                String::from_utf8_lossy(&data)
            ),
        };
        let Message::Binary(b) = msg else {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            continue;
        };
        let (ch, payload) = (b[0] as usize, &b[1..]);
        if announced.len() < 4 {
            // First message on each channel: its port, 2 bytes little-endian.
            announced.push((ch, u16::from_le_bytes([payload[0], payload[1]])));
            if announced.len() == 4 && !sent {
                let mut m = vec![0u8];
                m.extend_from_slice(b"GET /index.html HTTP/1.0\r\n\r\n");
                ws.send(Message::Binary(m.into())).await.unwrap();
                sent = true;
            }
            continue;
        }
        match ch {
            0 => data.extend_from_slice(payload),
            1 | 3 => errors[ch / 2].push_str(&String::from_utf8_lossy(payload)),
            _ => panic!("unexpected channel {ch}"),
        }
    }
    assert_eq!(announced, vec![(0, 8080), (1, 8080), (2, 9999), (3, 9999)]);
    (String::from_utf8_lossy(&data).into_owned(), errors)
}

#[tokio::test]
async fn kubectl_port_forward_reaches_a_pod_over_websocket_and_spdy() {
    if let Some(why) = unsupported() {
        eprintln!("skipping: {why}");
        return;
    }
    let cluster = Cluster::start("e2e-pf");
    start_web_pod(&cluster).await;

    // The Python client's protocol; polled until httpd listens (a Running
    // pod's server may still be starting; nothing reports that here).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (page, errors) = loop {
        let (page, errors) = v4_get(&cluster).await;
        if page.contains(PAGE) || Instant::now() > deadline {
            break (page, errors);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_page(&page);
    assert_eq!(errors[0], "", "no error for the listening port");
    assert!(
        errors[1].contains("error forwarding port 9999"),
        "{errors:?}"
    );
    assert!(errors[1].to_lowercase().contains("refused"), "{errors:?}");

    for websockets in [true, false] {
        let tag = if websockets { "ws" } else { "spdy" };
        let pf = PortForward::start(&cluster, 8080, websockets, tag);
        assert_page(&http_get(pf.local_port).await.unwrap());
        two_concurrent_gets(pf.local_port).await;
        // The same session keeps serving further connections.
        assert_page(&http_get(pf.local_port).await.unwrap());
        drop(pf);
    }

    // Nothing listens on 9999: the connection is closed without data and
    // kubectl reports the pod's error.
    for websockets in [true, false] {
        let tag = if websockets { "ws-err" } else { "spdy-err" };
        let mut pf = PortForward::start(&cluster, 9999, websockets, tag);
        let resp = http_get(pf.local_port).await.unwrap_or_default();
        assert_eq!(resp, "", "no data from a closed port");
        // kubectl 1.32 itself ends the whole session once an error stream
        // carries a message ("lost connection to pod"); wait for that.
        let deadline = Instant::now() + Duration::from_secs(20);
        while pf.proc.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let err = pf.stderr();
        assert!(err.contains("error forwarding port 9999"), "{err}");
        assert!(err.to_lowercase().contains("connection refused"), "{err}");
    }

    // The agent serves new sessions after those errors.
    let pf = PortForward::start(&cluster, 8080, true, "after");
    assert_page(&http_get(pf.local_port).await.unwrap());
}
