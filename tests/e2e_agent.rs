//! End to end: the node agent runs real runc containers. Each test starts a
//! `shoal server` and a `shoal agent` (its own node, data directory and image
//! directory built from Debian's busybox-static), or `shoal up`.
//!
//! Needs root, runc and a static /bin/busybox (`apt-get install runc
//! busybox-static`); skips with a message otherwise.

mod common;

use common::Server;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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

/// An image directory for `--image-dir` with `busybox` built from /bin/busybox.
fn build_images(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    let root = images.join("busybox/rootfs");
    for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    let list = Command::new("/bin/busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnobody:x:65534:\n").unwrap();
    std::fs::write(images.join("busybox/config.json"), r#"{"cmd": ["sh"]}"#).unwrap();
    images
}

/// Wait for a line containing `ready` on a child's stdout.
fn wait_ready(child: &mut Child, what: &str) -> String {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains("ready") {
                let _ = tx.send(line.clone());
            }
            line.clear();
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} printed no ready line"))
}

fn kill(child: &mut Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

/// A server and an agent for one node.
struct Cluster {
    server: Server,
    agent: Option<Child>,
    node: String,
    tmp: tempfile::TempDir,
    images: PathBuf,
}

impl Cluster {
    fn start(node: &str) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(&tmp.path().join("server"));
        let images = build_images(tmp.path());
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
        let mut c = Cluster {
            server,
            agent: None,
            node: node.into(),
            tmp,
            images,
        };
        c.start_agent();
        c
    }

    fn agent_dir(&self) -> PathBuf {
        self.tmp.path().join("agent")
    }

    fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join("agent.log"))
            .unwrap();
        let mut child = Command::new(SHOAL)
            .arg("agent")
            .arg("--kubeconfig")
            .arg(self.tmp.path().join("node.kubeconfig"))
            .args(["--node-name", &self.node, "--zone", "zone-a", "--data-dir"])
            .arg(self.agent_dir())
            .arg("--image-dir")
            .arg(&self.images)
            .args(common::NO_POD_NETWORK)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_ready(&mut child, "shoal agent");
        self.agent = Some(child);
    }

    fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            kill(&mut a, "KILL");
        }
    }

    async fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.server.client().await, "default")
    }

    /// A host directory for a test's hostPath volumes.
    fn host_dir(&self, name: &str) -> PathBuf {
        let p = self.tmp.path().join("host").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_agent();
        common::clean_node(&self.agent_dir());
    }
}

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

fn container(command: &str) -> Value {
    json!({"name": "c", "image": "busybox", "command": ["sh", "-c", command]})
}

async fn wait_pod(
    pods: &Api<Pod>,
    name: &str,
    secs: u64,
    what: &str,
    f: impl Fn(&Pod) -> bool,
) -> Pod {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(Some(p)) = pods.get_opt(name).await {
            if f(&p) {
                return p;
            }
            last = Some(p);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "pod {name}: {what} not seen within {secs}s; last status: {}",
        serde_json::to_string_pretty(&last.and_then(|p| p.status)).unwrap()
    );
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn cstatus(p: &Pod) -> Value {
    serde_json::to_value(
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first()),
    )
    .unwrap()
}

fn restarts(p: &Pod) -> i64 {
    cstatus(p)["restartCount"].as_i64().unwrap_or(0)
}

async fn wait_gone(pods: &Api<Pod>, name: &str, secs: u64) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if pods.get_opt(name).await.unwrap().is_none() {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pod {name} still exists after {secs}s");
}

#[tokio::test]
async fn node_registers_and_pods_see_env_volumes_and_exit_codes() {
    require_runc!();
    let cluster = Cluster::start("e2e-env");
    let client = cluster.server.client().await;

    let node = Api::<Node>::all(client.clone())
        .get("e2e-env")
        .await
        .unwrap();
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], "e2e-env");
    assert_eq!(labels["topology.kubernetes.io/zone"], "zone-a");
    assert_eq!(labels["kubernetes.io/os"], "linux");
    let status = node.status.unwrap();
    assert_eq!(status.capacity.as_ref().unwrap()["pods"].0, "110");
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(status.node_info.unwrap().kubelet_version, "v1.32.0-shoal");
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(
        client.clone(),
        "kube-node-lease",
    )
    .get("e2e-env")
    .await
    .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("e2e-env")
    );

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            json!({"metadata": {"name": "settings"}, "data": {"color": "blue", "size": "L"}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();

    let pods = cluster.pods().await;
    let mut c = container(
        "echo \"$COLOR $PASS $POD $CM_size $(cat /etc/cfg/color) $(cat /etc/creds/password) $(hostname) $GREETING\" > /dev/termination-log; echo to-the-log; exit 3",
    );
    c["env"] = json!([
        {"name": "COLOR", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "color"}}},
        {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hi-$(POD)"}
    ]);
    c["envFrom"] = json!([{"configMapRef": {"name": "settings"}, "prefix": "CM_"}]);
    c["volumeMounts"] = json!([
        {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": true},
        {"name": "creds", "mountPath": "/etc/creds"}
    ]);
    pods.create(
        &PostParams::default(),
        &pod(
            "envpod",
            json!({"restartPolicy": "Never", "containers": [c], "volumes": [
                {"name": "cfg", "configMap": {"name": "settings"}},
                {"name": "creds", "secret": {"secretName": "creds"}}
            ]}),
        ),
    )
    .await
    .unwrap();
    let p = wait_pod(&pods, "envpod", 60, "phase Failed", |p| {
        phase(p) == "Failed"
    })
    .await;
    let term = cstatus(&p)["state"]["terminated"].clone();
    assert_eq!(term["exitCode"], 3, "{term}");
    assert_eq!(term["reason"], "Error");
    assert_eq!(
        term["message"].as_str().unwrap().trim(),
        "blue s3cret envpod L blue s3cret envpod hi-envpod"
    );
    assert!(cstatus(&p)["containerID"]
        .as_str()
        .unwrap()
        .starts_with("shoal://"));
    let st = p.status.as_ref().unwrap();
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(st.start_time.is_some());
    let uid = p.metadata.uid.clone().unwrap();
    let log_dir = shoal_agent::logs::pod_log_dir(&cluster.agent_dir(), "default", "envpod", &uid);
    let log = shoal_agent::logs::read_container_log(&log_dir, "c", false).unwrap();
    assert_eq!(log, "to-the-log\n");

    // Init containers run in order before the main container, sharing an emptyDir.
    let spec = json!({
        "restartPolicy": "Never",
        "volumes": [{"name": "work", "emptyDir": {}}],
        "initContainers": [
            {"name": "one", "image": "busybox", "command": ["sh", "-c", "echo one >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
            {"name": "two", "image": "busybox", "command": ["sh", "-c", "echo two >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
        ],
        "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", "cat /work/order > /dev/termination-log"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]}]
    });
    pods.create(&PostParams::default(), &pod("initpod", spec))
        .await
        .unwrap();
    let p = wait_pod(&pods, "initpod", 60, "phase Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;
    assert_eq!(cstatus(&p)["state"]["terminated"]["message"], "one\ntwo\n");
    let init = p.status.unwrap().init_container_statuses.unwrap();
    assert!(init.iter().all(|s| s
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap()
        .exit_code
        == 0));

    // Security context: user and group, a read-only root, no capabilities.
    let mut c = container(
        "echo \"$(id -u) $(id -g) $(grep CapBnd /proc/self/status)\" > /dev/termination-log; touch /written 2>/dev/null && echo root-is-writable >> /dev/termination-log; exit 0",
    );
    c["securityContext"] = json!({
        "runAsUser": 1000, "runAsGroup": 3000, "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}
    });
    pods.create(
        &PostParams::default(),
        &pod(
            "secpod",
            json!({"restartPolicy": "Never", "containers": [c]}),
        ),
    )
    .await
    .unwrap();
    let p = wait_pod(&pods, "secpod", 60, "phase Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;
    let msg = cstatus(&p)["state"]["terminated"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(msg, "1000 3000 CapBnd:\t0000000000000000\n", "{msg:?}");
}

#[tokio::test]
async fn restart_policies_are_honoured() {
    require_runc!();
    let cluster = Cluster::start("e2e-restart");
    let pods = cluster.pods().await;
    let data = cluster.host_dir("retry");
    let cases = [
        ("never-fails", "Never", container("exit 1")),
        ("onfailure-ok", "OnFailure", container("exit 0")),
        ("always-ok", "Always", container("exit 0")),
    ];
    for (name, policy, c) in cases {
        pods.create(
            &PostParams::default(),
            &pod(name, json!({"restartPolicy": policy, "containers": [c]})),
        )
        .await
        .unwrap();
    }
    let mut retry = container("if [ -f /data/once ]; then exit 0; fi; touch /data/once; exit 1");
    retry["volumeMounts"] = json!([{"name": "data", "mountPath": "/data"}]);
    pods.create(
        &PostParams::default(),
        &pod(
            "onfailure-retry",
            json!({"restartPolicy": "OnFailure", "containers": [retry],
                   "volumes": [{"name": "data", "hostPath": {"path": data.display().to_string()}}]}),
        ),
    )
    .await
    .unwrap();

    let p = wait_pod(&pods, "never-fails", 60, "Failed", |p| phase(p) == "Failed").await;
    assert_eq!(restarts(&p), 0);
    let p = wait_pod(&pods, "onfailure-ok", 60, "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;
    assert_eq!(restarts(&p), 0);
    // Back-off is 10 s before the first restart.
    let p = wait_pod(
        &pods,
        "onfailure-retry",
        60,
        "Succeeded after a restart",
        |p| phase(p) == "Succeeded",
    )
    .await;
    assert_eq!(restarts(&p), 1);
    let p = wait_pod(&pods, "always-ok", 60, "a restart", |p| restarts(p) >= 1).await;
    assert_eq!(phase(&p), "Running");
    // Terminal pods stay put: no more restarts for never-fails.
    let p = pods.get("never-fails").await.unwrap();
    assert_eq!((phase(&p), restarts(&p)), ("Failed", 0));
}

#[tokio::test]
async fn crashing_container_backs_off_with_growing_delays() {
    require_runc!();
    let cluster = Cluster::start("e2e-crash");
    let pods = cluster.pods().await;
    pods.create(
        &PostParams::default(),
        &pod(
            "crasher",
            json!({"containers": [container("echo boom; exit 2")]}),
        ),
    )
    .await
    .unwrap();
    let p = wait_pod(&pods, "crasher", 60, "CrashLoopBackOff", |p| {
        cstatus(p)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let t0 = Instant::now();
    assert_eq!(cstatus(&p)["lastState"]["terminated"]["exitCode"], 2);
    assert_eq!(phase(&p), "Running");
    wait_pod(&pods, "crasher", 30, "restartCount 1", |p| restarts(p) >= 1).await;
    let t1 = Instant::now();
    let p = wait_pod(&pods, "crasher", 60, "restartCount 2", |p| restarts(p) >= 2).await;
    let t2 = Instant::now();
    let (first, second) = (t1 - t0, t2 - t1);
    assert!(first >= Duration::from_secs(8), "first back-off {first:?}");
    assert!(
        second >= Duration::from_secs(17),
        "second back-off {second:?}"
    );
    assert!(second > first, "back-off grows: {first:?} then {second:?}");
    assert!(cstatus(&p)["lastState"]["terminated"]["exitCode"] == 2);
}

#[tokio::test]
async fn deleting_a_pod_sends_sigterm_and_removes_it() {
    require_runc!();
    let cluster = Cluster::start("e2e-delete");
    let pods = cluster.pods().await;
    let out = cluster.host_dir("out");
    let mut c =
        container("trap 'echo got-term > /out/term; exit 0' TERM; while true; do sleep 1; done");
    c["volumeMounts"] = json!([{"name": "out", "mountPath": "/out"}]);
    pods.create(
        &PostParams::default(),
        &pod("graceful", json!({"containers": [c], "volumes": [{"name": "out", "hostPath": {"path": out.display().to_string()}}]})),
    )
    .await
    .unwrap();
    // A container that ignores SIGTERM (a shell as pid 1 without a trap) is
    // killed after its grace period.
    pods.create(
        &PostParams::default(),
        &pod(
            "stubborn",
            json!({"terminationGracePeriodSeconds": 2, "containers": [container("sleep 1000")]}),
        ),
    )
    .await
    .unwrap();
    for name in ["graceful", "stubborn"] {
        wait_pod(&pods, name, 60, "Running", |p| phase(p) == "Running").await;
    }
    pods.delete("graceful", &DeleteParams::default())
        .await
        .unwrap();
    let took = wait_gone(&pods, "graceful", 20).await;
    assert!(took < Duration::from_secs(15), "graceful pod took {took:?}");
    assert_eq!(
        std::fs::read_to_string(out.join("term")).unwrap(),
        "got-term\n"
    );

    pods.delete("stubborn", &DeleteParams::default())
        .await
        .unwrap();
    let took = wait_gone(&pods, "stubborn", 20).await;
    assert!(
        took >= Duration::from_millis(1500),
        "killed before its grace: {took:?}"
    );
    // Nothing of either pod is left on the node.
    assert!(std::fs::read_dir(cluster.agent_dir().join("pods"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn memory_limits_reach_the_cgroup_and_oom_kills_are_reported() {
    require_runc!();
    let cluster = Cluster::start("e2e-memory");
    let pods = cluster.pods().await;
    let mut c = container("sleep 1000");
    c["resources"] = json!({"limits": {"memory": "48Mi", "cpu": "500m"}});
    pods.create(
        &PostParams::default(),
        &pod("limited", json!({"containers": [c]})),
    )
    .await
    .unwrap();
    let p = wait_pod(&pods, "limited", 60, "Running", |p| phase(p) == "Running").await;
    let id = cstatus(&p)["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("shoal://")
        .to_string();
    let uid = p.metadata.uid.unwrap();
    let cgroup = format!("/shoal/pod{uid}/{id}");
    assert_eq!(
        shoal_agent::runtime::cgroups::memory_limit(&cgroup),
        Some(48 * 1024 * 1024)
    );

    let mut hog = json!({"name": "c", "image": "busybox", "command": ["tail", "/dev/zero"]});
    hog["resources"] = json!({"limits": {"memory": "16Mi"}});
    pods.create(
        &PostParams::default(),
        &pod(
            "hog",
            json!({"restartPolicy": "Never", "containers": [hog]}),
        ),
    )
    .await
    .unwrap();
    let p = wait_pod(&pods, "hog", 60, "Failed", |p| phase(p) == "Failed").await;
    let term = cstatus(&p)["state"]["terminated"].clone();
    assert_eq!(term["reason"], "OOMKilled", "{term}");
    assert_eq!(term["exitCode"], 137);
}

#[tokio::test]
async fn restarted_agent_adopts_running_containers() {
    require_runc!();
    let mut cluster = Cluster::start("e2e-adopt");
    let pods = cluster.pods().await;
    pods.create(
        &PostParams::default(),
        &pod("steady", json!({"containers": [container("sleep 1000")]})),
    )
    .await
    .unwrap();
    let before = wait_pod(&pods, "steady", 60, "Running", |p| phase(p) == "Running").await;
    let id = cstatus(&before)["containerID"]
        .as_str()
        .unwrap()
        .trim_start_matches("shoal://")
        .to_string();
    let runc_state = |dir: &Path| -> Value {
        let out = Command::new("runc")
            .arg("--root")
            .arg(dir.join("runc"))
            .args(["state", &id])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let state = runc_state(&cluster.agent_dir());
    assert_eq!(state["status"], "running");

    cluster.kill_agent();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = runc_state(&cluster.agent_dir());
    assert_eq!(
        during["status"], "running",
        "the container outlives the agent"
    );
    assert_eq!(during["pid"], state["pid"]);

    cluster.start_agent();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = pods.get("steady").await.unwrap();
    assert_eq!(phase(&after), "Running");
    assert_eq!(
        cstatus(&after)["containerID"],
        cstatus(&before)["containerID"]
    );
    assert_eq!(restarts(&after), 0);
    assert_eq!(cstatus(&after)["state"], cstatus(&before)["state"]);
    assert_eq!(runc_state(&cluster.agent_dir())["pid"], state["pid"]);

    // The adopted container is still managed: deleting the pod stops it.
    pods.delete("steady", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "steady", 45).await;
    assert_eq!(runc_state(&cluster.agent_dir()), Value::Null);
}

#[tokio::test]
async fn shoal_up_runs_pods_from_an_imported_image() {
    require_runc!();
    let tmp = tempfile::tempdir().unwrap();
    // The single-machine flow: build an image archive locally, start `shoal up`,
    // import the archive into the cluster's registry, run a pod that names it.
    let tar = tmp.path().join("busybox.tar");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/build-busybox-image.sh"
    );
    let built = Command::new("bash")
        .arg(script)
        .arg(&tar)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(built.success(), "building the busybox image");
    let data = tmp.path().join("up");
    let port = common::free_port();
    let mut up = Command::new(SHOAL)
        .arg("up")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-name",
            "e2e-up",
        ])
        .args(common::NO_POD_NETWORK)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = wait_ready(&mut up, "shoal up");
    assert!(line.contains("e2e-up"), "{line}");
    let kubeconfig = data.join("admin.kubeconfig");
    let run = async {
        let import = Command::new(SHOAL)
            .args(["image", "import", "--kubeconfig"])
            .arg(&kubeconfig)
            .arg(&tar)
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "{}",
            String::from_utf8_lossy(&import.stderr)
        );
        let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(kube::Client::try_from(cfg).unwrap(), "default");
        let spec = json!({"restartPolicy": "Never", "containers": [
            {"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", "echo hello > /dev/termination-log"]}
        ]});
        pods.create(&PostParams::default(), &pod("hello", spec))
            .await
            .unwrap();
        wait_pod(&pods, "hello", 90, "Succeeded", |p| phase(p) == "Succeeded").await
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await;
    kill(&mut up, "TERM");
    common::clean_node(&data.join("agent"));
    let p = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert_eq!(
        p.spec.as_ref().unwrap().node_name.as_deref(),
        Some("e2e-up")
    );
    let cs = cstatus(&p);
    assert_eq!(cs["state"]["terminated"]["message"], "hello\n");
    assert!(cs["imageID"].as_str().unwrap().contains("sha256:"), "{cs}");
}
