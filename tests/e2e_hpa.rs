//! End to end: resource metrics and the HorizontalPodAutoscaler with real
//! containers. A `shoal server` (HPA sync every second) and a `shoal agent`
//! (usage pushed every second) run a Deployment whose busybox containers burn
//! CPU while a file in a hostPath directory exists; the real kubectl reads
//! `kubectl top`, creates the HPA and reads it back. The test removes the
//! file to stop the load and watches the Deployment come back down.
//!
//! Needs root, runc, a static /bin/busybox and /usr/bin/kubectl; skips with a
//! message otherwise.

mod common;

use common::Server;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::wait::await_condition;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
const KUBECTL: &str = "/usr/bin/kubectl";
const NODE: &str = "e2e-hpa";

/// Why this test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("not running as root".into());
    }
    if !Path::new(KUBECTL).exists() {
        return Some(format!("{KUBECTL} is not installed"));
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

/// The server and the agent of one node; everything is removed on drop.
struct Cluster {
    server: Server,
    agent: Option<Child>,
    tmp: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start_on(
            &tmp.path().join("server"),
            common::free_port(),
            &["--hpa-sync-period", "1s"],
        );
        let images = common::build_images(tmp.path(), &[]);
        let out = Command::new(SHOAL)
            .args(["kubeconfig", "node", NODE, "--data-dir"])
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
        let mut cmd = Command::new(SHOAL);
        cmd.arg("agent")
            .arg("--kubeconfig")
            .arg(tmp.path().join("node.kubeconfig"))
            .args([
                "--node-name",
                NODE,
                "--metrics-interval",
                "1s",
                "--data-dir",
            ])
            .arg(tmp.path().join("agent"))
            .arg("--image-dir")
            .arg(&images);
        if agent_has_flag("--pod-network") {
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
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("ready") {
                    let _ = tx.send(());
                }
                line.clear();
            }
        });
        let c = Cluster {
            server,
            agent: Some(child),
            tmp,
        };
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!("the agent printed no ready line; log:\n{}", c.agent_log());
        }
        c
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("agent.log")).unwrap_or_default()
    }

    /// The directory mounted into the pods as /ctl.
    fn ctl_dir(&self) -> PathBuf {
        let p = self.tmp.path().join("ctl");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(KUBECTL)
            .env("KUBECONFIG", &self.server.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (good, out, err) = self.kubectl(args);
        assert!(
            good,
            "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}"
        );
        out
    }

    fn apply(&self, manifest: &str) {
        let mut child = Command::new(KUBECTL)
            .env("KUBECONFIG", &self.server.kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(manifest.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Poll a kubectl command until `f` accepts its output (no watch exists
    /// for `kubectl top`: the metrics API is list/get only).
    fn poll_kubectl(&self, args: &[&str], secs: u64, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = String::new();
        while Instant::now() < deadline {
            let (good, out, err) = self.kubectl(args);
            if good && f(&out) {
                return out;
            }
            last = format!("{out}{err}");
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("kubectl {args:?}: expected output not seen within {secs}s; last:\n{last}");
    }
}

fn agent_has_flag(flag: &str) -> bool {
    Command::new(SHOAL)
        .args(["agent", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
        .unwrap_or(false)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(a.id().to_string())
                .status();
            let _ = a.wait();
        }
        common::clean_node(&self.tmp.path().join("agent"));
    }
}

/// Wait (by watching the Deployment) until its spec.replicas is `n`.
async fn wait_replicas(api: &Api<Deployment>, n: i32, secs: u64, what: &str) -> Duration {
    let start = Instant::now();
    let cond = move |d: Option<&Deployment>| {
        d.and_then(|d| d.spec.as_ref()).and_then(|s| s.replicas) == Some(n)
    };
    match tokio::time::timeout(
        Duration::from_secs(secs),
        await_condition(api.clone(), "burn", cond),
    )
    .await
    {
        Ok(Ok(_)) => start.elapsed(),
        other => {
            let d = api.get_opt("burn").await.ok().flatten();
            panic!(
                "{what}: the Deployment did not reach {n} replicas within {secs}s ({:?}); spec: {:?}",
                other.err(),
                d.and_then(|d| d.spec).and_then(|s| s.replicas)
            )
        }
    }
}

/// The value of a `kubectl top` cell such as `153m` (CPU) or `12Mi` (memory).
fn milli_cpu(cell: &str) -> i64 {
    cell.trim_end_matches('m').parse().unwrap_or(-1)
}

#[tokio::test]
async fn hpa_scales_a_cpu_burning_deployment_up_and_back_down() {
    if let Some(why) = unsupported() {
        eprintln!("skipping: {why}");
        return;
    }
    let cluster = Cluster::start();
    let client = cluster.server.client().await;
    let ctl = cluster.ctl_dir();
    std::fs::write(ctl.join("burn"), "on").unwrap();

    // kubectl top nodes: the node with CPU and memory figures.
    let out = cluster.poll_kubectl(&["top", "nodes"], 60, |o| o.contains(NODE));
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[0], "NAME", "{out}");
    assert!(
        out.contains("CPU(cores)") && out.contains("MEMORY(bytes)"),
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .find(|l| l.starts_with(NODE))
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(milli_cpu(row[1]) >= 0 && row[3].ends_with("Mi"), "{out}");

    // Containers burn CPU while /ctl/burn exists, and sleep otherwise. The
    // limit keeps three of them within a fraction of this machine.
    let deployment = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: burn, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: burn}}}}
  template:
    metadata: {{labels: {{app: burn}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: burner
        image: busybox
        command: ["sh", "-c", "while :; do if [ -e /ctl/burn ]; then :; else sleep 1; fi; done"]
        resources:
          requests: {{cpu: 100m}}
          limits: {{cpu: 200m}}
        volumeMounts: [{{name: ctl, mountPath: /ctl}}]
      volumes:
      - name: ctl
        hostPath: {{path: {}, type: Directory}}
"#,
        ctl.display()
    );
    cluster.apply(&deployment);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // kubectl top pods shows the burning pod's CPU; --containers names the container; -A the namespace.
    let out = cluster.poll_kubectl(&["top", "pods", "-l", "app=burn"], 90, |o| {
        o.lines()
            .find(|l| l.starts_with("burn-"))
            .is_some_and(|l| milli_cpu(l.split_whitespace().nth(1).unwrap_or("")) >= 50)
    });
    assert!(out.starts_with("NAME"), "{out}");
    let out = cluster.ok(&["top", "pods", "--containers", "-l", "app=burn"]);
    assert!(
        out.contains("POD") && out.lines().any(|l| l.contains("burner")),
        "{out}"
    );
    let out = cluster.ok(&["top", "pods", "-A"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("default") && l.contains("burn-")),
        "{out}"
    );
    let out = cluster.ok(&[
        "get",
        "--raw",
        "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods",
    ]);
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "PodMetricsList");
    assert_eq!(list["items"][0]["containers"][0]["name"], "burner");

    // The HPA: 50% of the 100m request, 1..3 replicas, a short scale-down window.
    cluster.apply(
        r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: burn, namespace: default}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: burn}
  minReplicas: 1
  maxReplicas: 3
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 5
      policies: [{type: Percent, value: 100, periodSeconds: 1}]
"#,
    );
    wait_replicas(&deployments, 3, 90, "scale up").await;
    // REPLICAS is the next-to-last column (TARGETS holds a space: "cpu: 200%/50%").
    let out = cluster.poll_kubectl(&["get", "hpa", "burn"], 30, |o| {
        o.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().rev().nth(1) == Some("3"))
    });
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "REFERENCE",
            "TARGETS",
            "MINPODS",
            "MAXPODS",
            "REPLICAS",
            "AGE"
        ],
        "{out}"
    );
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.contains("Deployment/burn") && row.contains("cpu: ") && row.contains("%/50%"),
        "{out}"
    );
    let out = cluster.ok(&["describe", "hpa", "burn"]);
    assert!(
        out.contains("SuccessfulRescale") && out.contains("New size: 3"),
        "{out}"
    );
    let events = cluster.ok(&[
        "get",
        "events",
        "--field-selector",
        "reason=SuccessfulRescale",
        "-o",
        "json",
    ]);
    let events: Value = serde_json::from_str(&events).unwrap();
    assert!(events["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["message"]
            .as_str()
            .unwrap_or("")
            .contains("cpu resource utilization (percentage of request) above target")));
    let hpa: Value =
        serde_json::from_str(&cluster.ok(&["get", "hpa", "burn", "-o", "json"])).unwrap();
    let conds = hpa["status"]["conditions"].as_array().unwrap();
    let active = conds.iter().find(|c| c["type"] == "ScalingActive").unwrap();
    assert_eq!(active["status"], "True", "{hpa}");

    // Stop the load: the Deployment returns to one replica, but only after
    // the 5 s stabilization window has seen nothing but low recommendations.
    std::fs::remove_file(ctl.join("burn")).unwrap();
    let took = wait_replicas(&deployments, 1, 120, "scale down").await;
    // The last high recommendation comes a moment after the file is gone
    // (the samples cover the second before them), so allow a second of slack.
    assert!(
        took >= Duration::from_secs(4),
        "scaled down after {took:?}, inside the 5 s stabilization window"
    );
    cluster.poll_kubectl(&["get", "hpa", "burn", "-o", "json"], 10, |o| {
        serde_json::from_str::<Value>(o).is_ok_and(|h| h["status"]["desiredReplicas"] == 1)
    });
    let out = cluster.ok(&["describe", "hpa", "burn"]);
    assert!(out.contains("All metrics below target"), "{out}");

    // Clean up through the API; the cluster's drop removes what is left on the machine.
    cluster.ok(&["delete", "hpa", "burn"]);
    deployments
        .delete("burn", &DeleteParams::foreground())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline
        && !pods
            .list(&ListParams::default().labels("app=burn"))
            .await
            .unwrap()
            .items
            .is_empty()
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
