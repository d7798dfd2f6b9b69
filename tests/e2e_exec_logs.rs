//! End to end: `kubectl logs` and `kubectl exec` through the host to the
//! node agent's API, with the real kubectl (WebSocket, v5.channel.k8s.io)
//! and the v4 channel protocol the official Python client speaks.
//!
//! Each test runs in a network namespace it creates (entered by the test's
//! thread, so the server, the agent, kubectl and the test's own connections
//! are all inside it, on its loopback): nothing touches the machine's own
//! network. Needs root, runc, a static /bin/busybox, `ip` and kubectl; skips
//! with a message otherwise.

mod common;

use common::Server;
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Why these tests cannot run here, if they cannot.
fn unsupported() -> Option<String> {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("not running as root".into());
    }
    for (bin, arg, pkg) in [
        ("runc", "--version", "runc"),
        ("kubectl", "version", "kubectl"),
        ("ip", "-V", "iproute2"),
        ("script", "--version", "bsdutils"),
    ] {
        let ok = Command::new(bin)
            .arg(arg)
            .args(if bin == "kubectl" {
                &["--client"][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Some(format!("{bin} is not installed ({pkg})"));
        }
    }
    match std::fs::read("/bin/busybox") {
        Ok(b) if !common::has_interpreter(&b) => None,
        _ => Some("a static /bin/busybox is missing (apt-get install busybox-static)".into()),
    }
}

macro_rules! require {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// A network namespace made for one test, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> NetNs {
        let name = format!("shoal-e2e-{tag}-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {name}");
        let ns = NetNs(name);
        let ok = Command::new("ip")
            .args(["-n", &ns.0, "link", "set", "lo", "up"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "lo up in {}", ns.0);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// Run `body` on a thread inside a fresh network namespace, on a
/// single-threaded runtime (so every socket and child process is made there).
fn in_netns<F, Fut>(tag: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let ns = NetNs::new(tag);
    let path = PathBuf::from("/run/netns").join(&ns.0);
    let result = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
    })
    .join();
    drop(ns);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

/// A server and one agent (its API on a free port), in the test's namespace.
struct Cluster {
    server: Server,
    agent: Child,
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
        std::fs::write(tmp.path().join("node.kubeconfig"), &out.stdout).unwrap();
        let help = Command::new(SHOAL)
            .args(["agent", "--help"])
            .output()
            .unwrap();
        let mut extra: Vec<&str> = vec!["--agent-port", "0"];
        if String::from_utf8_lossy(&help.stdout).contains("--pod-network") {
            extra.extend(["--pod-network", "none"]);
        }
        let log = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
        let mut agent = Command::new(SHOAL)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(tmp.path().join("node.kubeconfig"))
            .args(["--node-name", node, "--data-dir"])
            .arg(tmp.path().join("agent"))
            .arg("--image-dir")
            .arg(&images)
            .args(&extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = agent.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("ready") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = agent.kill();
            let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
            panic!("shoal agent printed no ready line; its log:\n{log}");
        }
        Cluster { server, agent, tmp }
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = Command::new("kubectl");
        c.arg("--kubeconfig")
            .arg(&self.server.kubeconfig)
            .args(args);
        c
    }

    /// Run kubectl to completion.
    fn run(&self, args: &[&str]) -> Output {
        self.kubectl(args).stdin(Stdio::null()).output().unwrap()
    }

    async fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.server.client().await, "default")
    }

    fn host_dir(&self) -> PathBuf {
        let p = self.tmp.path().join("host");
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.agent.id().to_string()])
            .status();
        let _ = self.agent.wait();
        common::clean_node(&self.tmp.path().join("agent"));
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn create(pods: &Api<Pod>, name: &str, spec: Value) {
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

/// Poll (no watch is needed for a test's patience) until `f` holds.
async fn wait_pod(pods: &Api<Pod>, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(Some(p)) = pods.get_opt(name).await {
            let v = serde_json::to_value(&p).unwrap();
            if f(&v) {
                return v;
            }
            last = v["status"].clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("pod {name}: {what} not seen in time; last status: {last:#}");
}

fn all_running(p: &Value) -> bool {
    p["status"]["containerStatuses"]
        .as_array()
        .is_some_and(|cs| !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object()))
}

#[test]
fn kubectl_logs_follow_previous_and_errors() {
    require!();
    in_netns("logs", || async {
        let cluster = Cluster::start("logs-node");
        let pods = cluster.pods().await;
        let host = cluster.host_dir();
        // The first run prints and fails; the second prints, then waits for
        // the test's go-ahead before printing its last line.
        let script = r#"n=$(cat /data/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /data/n
echo "attempt $n"; sleep 0.2; echo "to stderr $n" >&2
[ $n -lt 2 ] && exit 1
while [ ! -e /host/go ]; do sleep 0.1; done
echo late-line; exec sleep 3600"#;
        create(
            &pods,
            "counter",
            json!({
                "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script],
                                "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                                 {"name": "host", "mountPath": "/host"}]}],
                "volumes": [{"name": "data", "emptyDir": {}},
                            {"name": "host", "hostPath": {"path": host.to_str().unwrap()}}],
                "terminationGracePeriodSeconds": 1,
            }),
        )
        .await;
        create(
            &pods,
            "two",
            json!({"containers": [
                {"name": "a", "image": "busybox", "command": ["sh", "-c", "echo from-a; exec sleep 3600"]},
                {"name": "b", "image": "busybox", "command": ["sh", "-c", "echo from-b; exec sleep 3600"]}],
                "terminationGracePeriodSeconds": 1}),
        )
        .await;
        wait_pod(&pods, "counter", "second attempt running", |p| {
            all_running(p) && p["status"]["containerStatuses"][0]["restartCount"] == 1
        })
        .await;

        // Follow from before the last line is written.
        let mut follow = cluster
            .kubectl(&["logs", "-f", "counter"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let out = follow.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        // Wait for the stderr line too before the go-ahead: stdout and stderr
        // are captured from two pipes, so their order in the log is only
        // fixed once the earlier line is already in it.
        while !seen.iter().any(|l: &String| l == "to stderr 2") {
            let left = deadline.saturating_duration_since(Instant::now());
            seen.push(rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("kubectl logs -f did not show the running attempt; saw {seen:?}")
            }));
        }
        assert!(
            !seen.iter().any(|l| l == "late-line"),
            "written before the go-ahead: {seen:?}"
        );
        std::fs::write(host.join("go"), "").unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !seen.iter().any(|l: &String| l == "late-line") {
            let left = deadline.saturating_duration_since(Instant::now());
            seen.push(rx.recv_timeout(left).unwrap_or_else(|_| {
                panic!("kubectl logs -f did not stream the line written later; saw {seen:?}")
            }));
        }
        let _ = follow.kill();
        let _ = follow.wait();

        // Current and previous instance, stdout and stderr together.
        let now = cluster.run(&["logs", "counter"]);
        assert!(now.status.success(), "{}", text(&now.stderr));
        assert_eq!(text(&now.stdout), "attempt 2\nto stderr 2\nlate-line\n");
        let prev = cluster.run(&["logs", "counter", "--previous"]);
        assert!(prev.status.success(), "{}", text(&prev.stderr));
        assert_eq!(text(&prev.stdout), "attempt 1\nto stderr 1\n");
        let tail = cluster.run(&["logs", "counter", "--tail=1", "--timestamps"]);
        let line = text(&tail.stdout);
        assert!(
            line.ends_with(" late-line\n") && line.lines().count() == 1,
            "{line:?}"
        );
        assert!(
            line.starts_with("20") && line.contains('T'),
            "no timestamp: {line:?}"
        );
        let limited = cluster.run(&["logs", "counter", "--limit-bytes=5"]);
        assert_eq!(text(&limited.stdout), "attem");

        // Errors a user sees.
        let bad = cluster.run(&["logs", "counter", "-c", "nope"]);
        assert!(!bad.status.success());
        assert!(
            text(&bad.stderr).contains("container nope is not valid for pod counter"),
            "{}",
            text(&bad.stderr)
        );
        let missing = cluster.run(&["logs", "no-such-pod"]);
        assert!(!missing.status.success());
        assert!(
            text(&missing.stderr).contains("pods \"no-such-pod\" not found"),
            "{}",
            text(&missing.stderr)
        );
        wait_pod(&pods, "two", "running", all_running).await;
        let raw = cluster.run(&["get", "--raw", "/api/v1/namespaces/default/pods/two/log"]);
        assert!(!raw.status.success());
        assert!(
            text(&raw.stderr)
                .contains("a container name must be specified for pod two, choose one of: [a b]"),
            "{}",
            text(&raw.stderr)
        );
        let b = cluster.run(&["logs", "two", "-c", "b"]);
        assert_eq!(text(&b.stdout), "from-b\n");
        let no_prev = cluster.run(&["logs", "two", "-c", "a", "--previous"]);
        assert!(!no_prev.status.success());
        assert!(
            text(&no_prev.stderr)
                .contains("previous terminated container \"a\" in pod \"two\" not found"),
            "{}",
            text(&no_prev.stderr)
        );
    });
}

#[test]
fn kubectl_exec_exit_codes_stdin_and_tty() {
    require!();
    in_netns("exec", || async {
        let cluster = Cluster::start("exec-node");
        let pods = cluster.pods().await;
        create(
            &pods,
            "shell",
            json!({"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
                   "terminationGracePeriodSeconds": 1}),
        )
        .await;
        wait_pod(&pods, "shell", "running", all_running).await;

        let out = cluster.run(&["exec", "shell", "--", "sh", "-c", "echo hi; exit 3"]);
        assert_eq!(text(&out.stdout), "hi\n", "stderr: {}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(3), "stderr: {}", text(&out.stderr));

        let out = cluster.run(&["exec", "shell", "--", "sh", "-c", "echo out; echo err >&2"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "out\n");
        assert_eq!(text(&out.stderr), "err\n");

        // stdin through to the process, ended by kubectl's close signal.
        let mut cat = cluster
            .kubectl(&["exec", "-i", "shell", "--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = cat.stdin.take().unwrap();
        input
            .write_all(b"hello through stdin\nsecond line\n")
            .unwrap();
        drop(input);
        let out = cat.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello through stdin\nsecond line\n");

        let bad = cluster.run(&["exec", "shell", "-c", "nope", "--", "true"]);
        assert!(!bad.status.success());
        assert!(
            text(&bad.stderr).contains("container nope is not valid for pod shell"),
            "{}",
            text(&bad.stderr)
        );
        let missing = cluster.run(&["exec", "no-such-pod", "--", "true"]);
        assert!(
            text(&missing.stderr).contains("pods \"no-such-pod\" not found"),
            "{}",
            text(&missing.stderr)
        );

        // A terminal: kubectl under `script`, which gives it a pty.
        let cmd = format!(
            "stty cols 91 rows 17; kubectl --kubeconfig {} exec -it shell -- \
             sh -c 'tty; while [ \"$(stty size)\" = \"0 0\" ]; do sleep 0.1; done; stty size; exit 4'",
            cluster.server.kubeconfig.display()
        );
        let mut tty = Command::new("script")
            .args(["-qefc", &cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let keep_open = tty.stdin.take();
        let mut stdout = tty.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = stdout.read_to_end(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = tty.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "kubectl exec -it did not finish");
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(keep_open);
        let shown = text(&reader.join().unwrap());
        assert!(
            shown.contains("/dev/pts/"),
            "no terminal in the container: {shown:?}"
        );
        assert_eq!(status.code(), Some(4), "output: {shown:?}");
    });
}

/// TLS as the admin of the kubeconfig, for a raw WebSocket client.
fn admin_tls(kubeconfig: &Path) -> tokio_rustls::TlsConnector {
    use base64::Engine;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let kc: Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let ca = b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"]);
    let cert = b64(&kc["users"][0]["user"]["client-certificate-data"]);
    let key = b64(&kc["users"][0]["user"]["client-key-data"]);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Open an exec WebSocket offering `protocols`; returns it and the chosen subprotocol.
async fn exec_ws(server: &Server, query: &str, protocols: &str) -> (Ws, String) {
    let url = format!(
        "wss://127.0.0.1:{}/api/v1/namespaces/default/pods/ws/exec?{query}",
        server.port()
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .unwrap();
    let tls = admin_tls(&server.kubeconfig)
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let proto = resp
        .headers()
        .get("Sec-WebSocket-Protocol")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (ws, proto)
}

/// Read channel messages until the server closes: (stdout, stderr, status).
async fn collect(ws: &mut Ws) -> (String, String, Value) {
    let (mut out, mut err, mut status) = (Vec::new(), Vec::new(), Value::Null);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the exec session did not end");
        match msg {
            Some(Ok(Message::Binary(b))) if !b.is_empty() => match b[0] {
                1 => out.extend_from_slice(&b[1..]),
                2 => err.extend_from_slice(&b[1..]),
                3 => status = serde_json::from_slice(&b[1..]).unwrap(),
                _ => {}
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => {}
        }
    }
    (text(&out), text(&err), status)
}

#[test]
fn websocket_channel_protocols_v4_and_v5() {
    require!();
    in_netns("ws", || async {
        let cluster = Cluster::start("ws-node");
        let pods = cluster.pods().await;
        create(
            &pods,
            "ws",
            json!({"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}],
                   "terminationGracePeriodSeconds": 1}),
        )
        .await;
        wait_pod(&pods, "ws", "running", all_running).await;

        // The Python client: v4 only, repeated `command` parameters.
        let q = "command=sh&command=-c&command=echo%20out%3B%20echo%20err%20%3E%262%3B%20exit%207\
                 &stdin=false&stdout=true&stderr=true&tty=false";
        let (mut ws, proto) = exec_ws(&cluster.server, q, "v4.channel.k8s.io").await;
        assert_eq!(proto, "v4.channel.k8s.io");
        let (out, err, status) = collect(&mut ws).await;
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
        assert_eq!(status["status"], "Failure", "{status}");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "7");

        // Offered both, v5 wins; stdin ends with the v5 close signal.
        let q = "command=cat&stdin=true&stdout=true&stderr=true&tty=false";
        let (mut ws, proto) =
            exec_ws(&cluster.server, q, "v4.channel.k8s.io, v5.channel.k8s.io").await;
        assert_eq!(proto, "v5.channel.k8s.io");
        ws.send(Message::Binary(b"\x00typed input".to_vec().into()))
            .await
            .unwrap();
        ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
        let (out, _, status) = collect(&mut ws).await;
        assert_eq!(out, "typed input");
        assert_eq!(status["status"], "Success", "{status}");

        // The agent's API itself admits only the host: the admin is refused.
        let node = Api::<Node>::all(cluster.server.client().await)
            .get("ws-node")
            .await
            .unwrap();
        let port = node
            .status
            .unwrap()
            .daemon_endpoints
            .unwrap()
            .kubelet_endpoint
            .unwrap()
            .port;
        assert!(port > 0);
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port as u16))
            .await
            .unwrap();
        let answer = raw_agent_get(tcp, &cluster.server.kubeconfig, "/healthz").await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
        assert!(answer.contains("kube-apiserver-kubelet-client"), "{answer}");
    });
}

/// GET `path` from an agent with the admin's client certificate, not
/// verifying the agent's self-signed serving certificate; the raw response.
async fn raw_agent_get(tcp: tokio::net::TcpStream, kubeconfig: &Path, path: &str) -> String {
    use base64::Engine;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    #[derive(Debug)]
    struct Any;
    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let kc: Value = serde_yaml::from_str(&std::fs::read_to_string(kubeconfig).unwrap()).unwrap();
    let b64 = |v: &Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let cert = b64(&kc["users"][0]["user"]["client-certificate-data"]);
    let key = b64(&kc["users"][0]["user"]["client-key-data"]);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&key).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(Any))
    .with_client_auth_cert(chain, key)
    .unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = tls.read_to_end(&mut buf).await;
    text(&buf)
}
