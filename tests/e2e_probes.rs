//! End to end: container probes with real runc containers. Each test starts a
//! `shoal server` and a `shoal agent` (pod networking off, so probes reach
//! the pod on 127.0.0.1 inside its network namespace) and watches pods the
//! way a user would: restart counts, the `ready`/`started` flags, the pod's
//! `Ready` condition and the events kubelet would record.
//!
//! Needs root, runc and a static /bin/busybox (`apt-get install runc
//! busybox-static`); skips with a message otherwise.

mod common;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let runc_ok = Command::new("runc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runc_ok {
        return Some("runc is not installed (apt-get install runc)".into());
    }
    match std::fs::read("/bin/busybox") {
        Ok(b) if !common::has_interpreter(&b) => None,
        _ => Some("a static /bin/busybox is missing (apt-get install busybox-static)".into()),
    }
}

macro_rules! require_runc {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

/// A server and one agent; everything is removed on drop, even on failure.
struct Cluster {
    server: Server,
    agent: Option<Child>,
    tmp: tempfile::TempDir,
}

impl Cluster {
    fn start(node: &str) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(&tmp.path().join("server"));
        let images = common::build_images(tmp.path(), &["www"]);
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
        let log = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
        let mut child = Command::new(SHOAL)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(tmp.path().join("node.kubeconfig"))
            .args(["--node-name", node, "--data-dir"])
            .arg(tmp.path().join("agent"))
            .arg("--image-dir")
            .arg(&images)
            .args(common::NO_POD_NETWORK)
            .args(["--agent-port", "0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("ready") {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        let mut c = Cluster {
            server,
            agent: Some(child),
            tmp,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            c.stop_agent();
            panic!("shoal agent printed no ready line");
        }
        c
    }

    fn stop_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    async fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.server.client().await, "default")
    }

    fn host_dir(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join("host").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_agent();
        // What the agent left: runc containers, sandboxes, mounts, cgroups.
        let dir = self.tmp.path().join("agent");
        common::clean_node(&dir);
    }
}

async fn create(pods: &Api<Pod>, name: &str, spec: Value) {
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
}

/// Watch pod `name` until `f` holds; returns the pod and when it was seen.
async fn watch_until(
    pods: &Api<Pod>,
    name: &str,
    secs: u64,
    what: &str,
    mut f: impl FnMut(&Pod) -> bool,
) -> (Pod, Instant) {
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(pods.clone(), cfg)
        .applied_objects()
        .boxed();
    let mut last = None;
    let found = tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(p) = stream.try_next().await.unwrap() {
            if f(&p) {
                return Some(p);
            }
            last = Some(p);
        }
        None
    })
    .await;
    match found {
        Ok(Some(p)) => (p, Instant::now()),
        _ => panic!(
            "pod {name}: {what} not seen within {secs}s; last status: {}",
            serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap()
        ),
    }
}

fn status(p: &Pod) -> Value {
    serde_json::to_value(&p.status).unwrap()
}

fn cstatus(p: &Pod) -> Value {
    status(p)["containerStatuses"][0].clone()
}

fn condition(p: &Pod, kind: &str) -> Option<String> {
    status(p)["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn running(p: &Pod) -> bool {
    cstatus(p)["state"]["running"].is_object()
}

#[tokio::test]
async fn failing_exec_liveness_probe_restarts_the_container() {
    require_runc!();
    let cluster = Cluster::start("e2e-liveness");
    let pods = cluster.pods().await;
    // The classic example: healthy for 3 s, then the probe's file is gone.
    create(
        &pods,
        "live",
        json!({
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "app", "image": "busybox",
                "command": ["sh", "-c", "touch /tmp/healthy; sleep 3; rm /tmp/healthy; sleep 1000"],
                "livenessProbe": {
                    "exec": {"command": ["cat", "/tmp/healthy"]},
                    "periodSeconds": 1, "failureThreshold": 2
                }
            }]
        }),
    )
    .await;
    let (first, _) = watch_until(&pods, "live", 60, "running", running).await;
    assert_eq!(cstatus(&first)["restartCount"], 0);
    let first_id = cstatus(&first)["containerID"].clone();
    // Killed (sh ignores SIGTERM: SIGKILL after the 1 s grace) and, with
    // restartPolicy Always, started again after the back-off.
    let (p, _) = watch_until(&pods, "live", 90, "restart after liveness failure", |p| {
        cstatus(p)["restartCount"].as_i64().unwrap_or(0) >= 1 && running(p)
    })
    .await;
    let c = cstatus(&p);
    assert_ne!(c["containerID"], first_id, "a new container");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 137, "{c:#}");
    assert_eq!(c["lastState"]["terminated"]["containerID"], first_id);

    // The events kubelet would record for it.
    let events: Api<Event> = Api::namespaced(cluster.server.client().await, "default");
    let list = events.list(&ListParams::default()).await.unwrap();
    let about: Vec<&Event> = list
        .items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some("live"))
        .collect();
    let unhealthy = about
        .iter()
        .find(|e| e.reason.as_deref() == Some("Unhealthy"))
        .expect("an Unhealthy event");
    assert_eq!(unhealthy.type_.as_deref(), Some("Warning"));
    assert!(
        unhealthy
            .message
            .as_deref()
            .unwrap_or("")
            .starts_with("Liveness probe failed:"),
        "{:?}",
        unhealthy.message
    );
    let killing = about
        .iter()
        .find(|e| e.reason.as_deref() == Some("Killing"))
        .expect("a Killing event");
    assert_eq!(
        killing.message.as_deref(),
        Some("Container app failed liveness probe, will be restarted")
    );
    assert_eq!(
        killing.involved_object.field_path.as_deref(),
        Some("spec.containers{app}")
    );
}

#[tokio::test]
async fn http_readiness_flips_ready_both_ways() {
    require_runc!();
    let cluster = Cluster::start("e2e-readiness");
    let pods = cluster.pods().await;
    let www = cluster.host_dir("www");
    std::fs::write(www.join("index.html"), "ok\n").unwrap();
    create(
        &pods,
        "web",
        json!({
            "volumes": [{"name": "www", "hostPath": {"path": www.display().to_string()}}],
            "containers": [{
                "name": "web", "image": "busybox",
                "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "volumeMounts": [{"name": "www", "mountPath": "/www"}],
                "readinessProbe": {
                    "httpGet": {"path": "/index.html", "port": "http",
                        "httpHeaders": [{"name": "X-Probe", "value": "yes"}]},
                    "periodSeconds": 1, "failureThreshold": 1
                }
            }]
        }),
    )
    .await;
    let (p, _) = watch_until(&pods, "web", 60, "Ready=True", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    assert_eq!(cstatus(&p)["ready"], true);
    assert_eq!(condition(&p, "ContainersReady").as_deref(), Some("True"));

    // The served file goes away: httpd answers 404 and the pod turns unready
    // while its container keeps running.
    std::fs::remove_file(www.join("index.html")).unwrap();
    let (p, _) = watch_until(&pods, "web", 30, "Ready=False", |p| {
        condition(p, "Ready").as_deref() == Some("False")
    })
    .await;
    let c = cstatus(&p);
    assert_eq!(c["ready"], false);
    assert!(c["state"]["running"].is_object(), "{c:#}");
    assert_eq!(c["restartCount"], 0, "readiness never restarts");
    let ready = status(&p)["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap();
    assert_eq!(ready["reason"], "ContainersNotReady");

    // And back.
    std::fs::write(www.join("index.html"), "ok\n").unwrap();
    watch_until(&pods, "web", 30, "Ready=True again", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
}

#[tokio::test]
async fn tcp_socket_probes_follow_the_listening_port() {
    require_runc!();
    let cluster = Cluster::start("e2e-tcp");
    let pods = cluster.pods().await;
    // One pod listens on its probe port; the other probes a closed port.
    for (name, port) in [("open", 8081), ("closed", 9)] {
        create(
            &pods,
            name,
            json!({
                "containers": [{
                    "name": "app", "image": "busybox",
                    "command": ["httpd", "-f", "-p", "8081", "-h", "/www"],
                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                    "livenessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1,
                        "initialDelaySeconds": 1}
                }]
            }),
        )
        .await;
    }
    watch_until(&pods, "open", 60, "Ready=True", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let (closed, _) = watch_until(&pods, "closed", 60, "running", running).await;
    // Give the closed one's readiness probe the same chances the open one
    // needed, several periods over.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = pods.get("closed").await.unwrap_or(closed);
    let c = cstatus(&closed);
    assert_eq!(c["ready"], false, "{c:#}");
    assert!(c["state"]["running"].is_object());
    assert_eq!(condition(&closed, "Ready").as_deref(), Some("False"));
    // Their passing liveness probes restarted nothing.
    for name in ["open", "closed"] {
        let p = pods.get(name).await.unwrap();
        assert_eq!(cstatus(&p)["restartCount"], 0, "{name}");
    }
}

#[tokio::test]
async fn startup_probe_holds_readiness_until_it_passes() {
    require_runc!();
    let cluster = Cluster::start("e2e-startup");
    let pods = cluster.pods().await;
    create(
        &pods,
        "slow",
        json!({
            "containers": [{
                "name": "app", "image": "busybox",
                "command": ["sh", "-c", "sleep 4; touch /tmp/started; sleep 1000"],
                "startupProbe": {"exec": {"command": ["cat", "/tmp/started"]},
                    "periodSeconds": 1, "failureThreshold": 30},
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
                // Would kill the container if it ran before startup passed.
                "livenessProbe": {"exec": {"command": ["cat", "/tmp/started"]},
                    "periodSeconds": 1, "failureThreshold": 1}
            }]
        }),
    )
    .await;
    let (p, running_at) = watch_until(&pods, "slow", 60, "running", running).await;
    let c = cstatus(&p);
    assert_eq!(c["started"], false, "{c:#}");
    assert_eq!(c["ready"], false);
    assert_eq!(condition(&p, "Ready").as_deref(), Some("False"));
    let (p, ready_at) = watch_until(&pods, "slow", 60, "Ready=True", |p| {
        condition(p, "Ready").as_deref() == Some("True")
    })
    .await;
    let c = cstatus(&p);
    assert_eq!(c["started"], true);
    assert_eq!(c["ready"], true);
    assert_eq!(c["restartCount"], 0, "liveness waited for startup");
    assert!(
        ready_at - running_at >= Duration::from_secs(2),
        "ready {:?} after running",
        ready_at - running_at
    );
}
