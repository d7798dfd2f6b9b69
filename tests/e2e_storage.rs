//! End to end: persistent storage with real runc containers. Each test starts
//! a `shoal server` and a `shoal agent` (its own node and data directory,
//! busybox image from Debian's busybox-static) and drives them with kube-rs
//! and the real kubectl.
//!
//! Needs root, runc and a static /bin/busybox; skips with a message otherwise.

mod common;

use common::Server;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

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
    if std::fs::read("/bin/busybox").map_or(true, |elf| common::has_interpreter(&elf)) {
        return Some("a static /bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

macro_rules! require_runc {
    () => {
        if let Some(why) = unsupported() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn wait_ready(child: &mut Child, what: &str) {
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
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("{what} printed no ready line"));
}

struct Cluster {
    server: Server,
    agent: Option<Child>,
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
        let log = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
        let help = Command::new(SHOAL)
            .args(["agent", "--help"])
            .output()
            .unwrap();
        let mut cmd = Command::new(SHOAL);
        cmd.arg("agent")
            .arg("--kubeconfig")
            .arg(tmp.path().join("node.kubeconfig"))
            .args(["--node-name", node, "--data-dir"])
            .arg(tmp.path().join("agent"))
            .arg("--image-dir")
            .arg(&images);
        // Pods need no network here; never touch the machine's own.
        let help = String::from_utf8_lossy(&help.stdout);
        if help.contains("--pod-network") {
            cmd.args(["--pod-network", "none"]);
        }
        // Another agent on this machine may hold kubelet's port.
        if help.contains("--agent-port") {
            cmd.args(["--agent-port", "0"]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        wait_ready(&mut child, "shoal agent");
        Cluster {
            server,
            agent: Some(child),
            tmp,
        }
    }

    fn agent_dir(&self) -> PathBuf {
        self.tmp.path().join("agent")
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.server.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(a.id().to_string())
                .status();
            let _ = a.wait();
        }
        common::clean_node(&self.agent_dir());
    }
}

/// Poll `f` until it returns Some (there is no single watch for these
/// multi-object conditions), or fail with `what` and the last value seen.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        match f().await {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what} not seen within {secs}s; last: {last}");
}

fn claim(name: &str, class: Option<&str>, size: &str) -> PersistentVolumeClaim {
    let mut v = json!({"metadata": {"name": name}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}});
    if let Some(c) = class {
        v["spec"]["storageClassName"] = json!(c);
    }
    serde_json::from_value(v).unwrap()
}

fn pod_with_claim(name: &str, claim: &str, script: &str, restart: &str) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 1,
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}))
    .unwrap()
}

async fn phase_of(pods: &Api<Pod>, name: &str) -> Result<(String, Value), String> {
    let p = pods
        .get_opt(name)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("pod not found")?;
    let st = serde_json::to_value(&p.status).unwrap();
    Ok((st["phase"].as_str().unwrap_or("").to_string(), st))
}

async fn wait_phase(pods: &Api<Pod>, name: &str, want: &str) -> Value {
    eventually(90, &format!("pod {name} {want}"), || async {
        let (ph, st) = phase_of(pods, name).await?;
        if ph == want {
            Ok(st)
        } else {
            Err(st.to_string())
        }
    })
    .await
}

async fn wait_gone<K>(api: &Api<K>, name: &str, secs: u64)
where
    K: kube::Resource + Clone + for<'de> k8s_openapi::serde::Deserialize<'de> + std::fmt::Debug,
{
    eventually(secs, &format!("{name} gone"), || async {
        match api.get_opt(name).await {
            Ok(None) => Ok(()),
            Ok(Some(o)) => Err(format!("{:?}", o.meta().deletion_timestamp)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

async fn bound_volume(claims: &Api<PersistentVolumeClaim>, name: &str) -> String {
    eventually(60, &format!("claim {name} Bound"), || async {
        let c = claims.get(name).await.map_err(|e| e.to_string())?;
        let phase = c
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        match c.spec.as_ref().and_then(|s| s.volume_name.clone()) {
            Some(v) if phase == "Bound" => Ok(v),
            _ => Err(phase),
        }
    })
    .await
}

fn host_path(pv: &PersistentVolume) -> PathBuf {
    PathBuf::from(&pv.spec.as_ref().unwrap().host_path.as_ref().unwrap().path)
}

async fn events_for(client: &kube::Client, name: &str) -> Vec<(String, String)> {
    let evs: Api<Event> = Api::namespaced(client.clone(), "default");
    evs.list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn default_class_data_follows_the_claim_and_delete_reclaim_removes_it() {
    require_runc!();
    let cluster = Cluster::start("e2e-storage");
    let client = cluster.server.client().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());

    // The built-in default class exists; a claim without a class gets it and
    // waits for its first consumer.
    let sc = eventually(30, "local-path StorageClass", || async {
        Api::<StorageClass>::all(client.clone())
            .get("local-path")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(sc.provisioner, "shoal.dev/local-path");
    assert_eq!(
        sc.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    assert_eq!(sc.reclaim_policy.as_deref(), Some("Delete"));
    claims
        .create(&PostParams::default(), &claim("data", None, "64Mi"))
        .await
        .unwrap();
    eventually(
        30,
        "default class and WaitForFirstConsumer event",
        || async {
            let c = claims.get("data").await.map_err(|e| e.to_string())?;
            let class = c.spec.as_ref().and_then(|s| s.storage_class_name.clone());
            let evs = events_for(&client, "data").await;
            let waiting = evs.iter().any(|(r, _)| r == "WaitForFirstConsumer");
            let pending = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
            if class.as_deref() == Some("local-path") && waiting && pending {
                Ok(())
            } else {
                Err(format!("{class:?} {evs:?} {:?}", c.status))
            }
        },
    )
    .await;

    // A pod writes to it; the claim is bound to a volume on this node.
    pods.create(
        &PostParams::default(),
        &pod_with_claim(
            "writer",
            "data",
            "echo hello > /data/file && mkdir -p /data/sub && echo deep > /data/sub/inner",
            "Never",
        ),
    )
    .await
    .unwrap();
    wait_phase(&pods, "writer", "Succeeded").await;
    let pv_name = bound_volume(&claims, "data").await;
    let c = claims.get("data").await.unwrap();
    let ann = c.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        ann.get("volume.kubernetes.io/selected-node")
            .map(String::as_str),
        Some("e2e-storage")
    );
    assert_eq!(
        ann.get("pv.kubernetes.io/bind-completed")
            .map(String::as_str),
        Some("yes")
    );
    assert!(c
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&"kubernetes.io/pvc-protection".to_string()));
    let pv = volumes.get(&pv_name).await.unwrap();
    let spec = pv.spec.clone().unwrap();
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Delete")
    );
    assert_eq!(
        spec.claim_ref.as_ref().unwrap().name.as_deref(),
        Some("data")
    );
    let affinity = serde_json::to_value(&spec.node_affinity).unwrap();
    assert_eq!(
        affinity["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
        "e2e-storage"
    );
    let dir = host_path(&pv);
    assert_eq!(dir, cluster.agent_dir().join("storage").join(&pv_name));
    assert_eq!(
        std::fs::read_to_string(dir.join("file")).unwrap(),
        "hello\n"
    );

    // Deleted and recreated, the pod reads the same data; subPath and
    // readOnly mounts work.
    pods.delete("writer", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "writer", 60).await;
    let reader: Pod = serde_json::from_value(json!({"metadata": {"name": "reader"}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c",
            "cat /data/file /sub/inner > /data/seen; touch /ro/x 2>/dev/null && echo rw >> /data/seen || echo ro >> /data/seen; sleep 3600"],
            "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/sub", "subPath": "sub"},
                {"name": "data", "mountPath": "/ro", "readOnly": true}]}]}}))
    .unwrap();
    pods.create(&PostParams::default(), &reader).await.unwrap();
    wait_phase(&pods, "reader", "Running").await;
    eventually(30, "reader output", || async {
        match std::fs::read_to_string(dir.join("seen")) {
            Ok(s) if s.lines().count() == 3 => Ok(s),
            Ok(s) => Err(s),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(dir.join("seen")).unwrap(),
        "hello\ndeep\nro\n"
    );

    // Deleting the claim while the pod runs only marks it (pvc-protection).
    claims
        .delete("data", &DeleteParams::default())
        .await
        .unwrap();
    let c = claims.get("data").await.unwrap();
    assert!(c.metadata.deletion_timestamp.is_some());
    let out = cluster.kubectl(&["get", "pvc", "data"]);
    assert!(out.contains("Terminating"), "{out}");
    // Give the controller a chance to (wrongly) let it go.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        claims.get_opt("data").await.unwrap().is_some(),
        "claim in use was deleted"
    );
    assert_eq!(
        volumes
            .get(&pv_name)
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Bound")
    );
    assert!(dir.join("file").exists());

    // Once the pod is gone, the claim goes, the volume is released and
    // (reclaim Delete) its directory and the PV are removed.
    pods.delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "reader", 60).await;
    wait_gone(&claims, "data", 30).await;
    wait_gone(&volumes, &pv_name, 30).await;
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[tokio::test]
async fn retain_class_keeps_the_data_and_the_volume_goes_released() {
    require_runc!();
    let cluster = Cluster::start("e2e-retain");
    let client = cluster.server.client().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let sc: StorageClass = serde_json::from_value(json!({"metadata": {"name": "keep"},
        "provisioner": "shoal.dev/local-path", "reclaimPolicy": "Retain",
        "volumeBindingMode": "WaitForFirstConsumer"}))
    .unwrap();
    Api::<StorageClass>::all(client.clone())
        .create(&PostParams::default(), &sc)
        .await
        .unwrap();
    claims
        .create(&PostParams::default(), &claim("kept", Some("keep"), "32Mi"))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod_with_claim("w", "kept", "echo precious > /data/file", "Never"),
    )
    .await
    .unwrap();
    wait_phase(&pods, "w", "Succeeded").await;
    let pv_name = bound_volume(&claims, "kept").await;
    let dir = host_path(&volumes.get(&pv_name).await.unwrap());
    pods.delete("w", &DeleteParams::default()).await.unwrap();
    wait_gone(&pods, "w", 60).await;
    claims
        .delete("kept", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&claims, "kept", 30).await;
    let pv = eventually(30, "volume Released", || async {
        let pv = volumes.get(&pv_name).await.map_err(|e| e.to_string())?;
        match pv.status.as_ref().and_then(|s| s.phase.as_deref()) {
            Some("Released") => Ok(pv),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        pv.spec.unwrap().persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("file")).unwrap(),
        "precious\n"
    );
    let out = cluster.kubectl(&["get", "pv", &pv_name]);
    assert!(out.contains("Released") && out.contains("Retain"), "{out}");

    // Deleting the released volume by hand keeps the data (Retain).
    volumes
        .delete(&pv_name, &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&volumes, &pv_name, 30).await;
    assert!(dir.join("file").exists());
}

#[tokio::test]
async fn static_volumes_unsatisfiable_claims_and_kubectl_columns() {
    require_runc!();
    let cluster = Cluster::start("e2e-static");
    let client = cluster.server.client().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());

    // A claim nothing can satisfy stays Pending with an Event saying why.
    claims
        .create(&PostParams::default(), &claim("nothing", Some(""), "1Gi"))
        .await
        .unwrap();
    claims
        .create(
            &PostParams::default(),
            &claim("noclass", Some("missing-class"), "1Gi"),
        )
        .await
        .unwrap();
    let evs = eventually(30, "FailedBinding event", || async {
        let evs = events_for(&client, "nothing").await;
        if evs.iter().any(|(r, _)| r == "FailedBinding") {
            Ok(evs)
        } else {
            Err(format!("{evs:?}"))
        }
    })
    .await;
    assert!(
        evs.iter().any(|(_, m)| m
            == "no persistent volumes available for this claim and no storage class is set"),
        "{evs:?}"
    );
    let evs = eventually(30, "ProvisioningFailed event", || async {
        let evs = events_for(&client, "noclass").await;
        if evs.iter().any(|(r, _)| r == "ProvisioningFailed") {
            Ok(evs)
        } else {
            Err(format!("{evs:?}"))
        }
    })
    .await;
    assert!(
        evs.iter()
            .any(|(_, m)| m.contains("storageclass.storage.k8s.io \"missing-class\" not found")),
        "{evs:?}"
    );
    let c = claims.get("nothing").await.unwrap();
    assert_eq!(c.status.unwrap().phase.as_deref(), Some("Pending"));

    // A pod using a missing claim, or an unbound Immediate one, is not scheduled.
    pods.create(
        &PostParams::default(),
        &pod_with_claim("orphan", "missing", "true", "Never"),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod_with_claim(
            "waiting",
            "nothing",
            "cat /data/file > /dev/termination-log",
            "Never",
        ),
    )
    .await
    .unwrap();
    for (pod, reason) in [
        ("orphan", "persistentvolumeclaim \"missing\" not found"),
        (
            "waiting",
            "pod has unbound immediate PersistentVolumeClaims",
        ),
    ] {
        eventually(30, &format!("{pod} unschedulable"), || async {
            let (_, st) = phase_of(&pods, pod).await?;
            let cond = st["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled").cloned())
                .unwrap_or(Value::Null);
            let msg = cond["message"].as_str().unwrap_or("");
            if cond["status"] == "False" && msg.contains(reason) {
                Ok(())
            } else {
                Err(cond.to_string())
            }
        })
        .await;
    }

    // A hand-made hostPath volume satisfies the class-less claim; the
    // waiting pod then runs on it and reads what is there.
    let host = cluster.tmp.path().join("static-vol");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("file"), "from the host\n").unwrap();
    let pv: PersistentVolume = serde_json::from_value(
        json!({"metadata": {"name": "handmade", "labels": {"kind": "static"}},
        "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                 "hostPath": {"path": host.display().to_string()}}}),
    )
    .unwrap();
    let created = volumes.create(&PostParams::default(), &pv).await.unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
    assert_eq!(bound_volume(&claims, "nothing").await, "handmade");
    let st = wait_phase(&pods, "waiting", "Succeeded").await;
    assert_eq!(
        st["containerStatuses"][0]["state"]["terminated"]["message"],
        "from the host\n"
    );
    let pv = volumes.get("handmade").await.unwrap();
    assert_eq!(pv.status.unwrap().phase.as_deref(), Some("Bound"));
    assert!(pv
        .metadata
        .finalizers
        .unwrap_or_default()
        .contains(&"kubernetes.io/pv-protection".to_string()));

    // Validation: required fields, Kubernetes' messages.
    let bad: PersistentVolumeClaim =
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}}))
            .unwrap();
    let err = claims
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422 && s.message.contains("spec.accessModes")),
        "{err}"
    );

    // kubectl get pv,pvc,sc shows the usual columns.
    let out = cluster.kubectl(&["get", "pv,pvc,sc"]);
    let headers: Vec<&str> = out.lines().filter(|l| l.starts_with("NAME")).collect();
    let squash = |h: &str| {
        h.split("  ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("|")
    };
    assert_eq!(
        squash(headers[0]),
        "NAME|CAPACITY|ACCESS MODES|RECLAIM POLICY|STATUS|CLAIM|STORAGECLASS|VOLUMEATTRIBUTESCLASS|REASON|AGE",
        "{out}"
    );
    assert_eq!(
        squash(headers[1]),
        "NAME|STATUS|VOLUME|CAPACITY|ACCESS MODES|STORAGECLASS|VOLUMEATTRIBUTESCLASS|AGE",
        "{out}"
    );
    assert_eq!(
        squash(headers[2]),
        "NAME|PROVISIONER|RECLAIMPOLICY|VOLUMEBINDINGMODE|ALLOWVOLUMEEXPANSION|AGE",
        "{out}"
    );
    let row = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        row("persistentvolume/handmade")[..6],
        [
            "persistentvolume/handmade",
            "2Gi",
            "RWO",
            "Retain",
            "Bound",
            "default/nothing"
        ],
        "{out}"
    );
    assert_eq!(
        row("persistentvolumeclaim/nothing")[..5],
        [
            "persistentvolumeclaim/nothing",
            "Bound",
            "handmade",
            "2Gi",
            "RWO"
        ],
        "{out}"
    );
    assert_eq!(
        row("storageclass.storage.k8s.io/local-path")[..6],
        [
            "storageclass.storage.k8s.io/local-path",
            "(default)",
            "shoal.dev/local-path",
            "Delete",
            "WaitForFirstConsumer",
            "false"
        ],
        "{out}"
    );
}

#[tokio::test]
async fn statefulset_members_keep_their_claims_and_data_with_real_containers() {
    require_runc!();
    let cluster = Cluster::start("e2e-storage-sts");
    let client = cluster.server.client().await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let sets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), "default");

    // Each member appends what it finds on its volume when it starts, then
    // records its own name there the first time.
    let script = "echo start-$(cat /data/id 2>/dev/null || echo none) >> /data/log; \
                  test -f /data/id || hostname > /data/id; exec sleep 3600";
    let set: k8s_openapi::api::apps::v1::StatefulSet = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": "busybox",
                        "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "www", "mountPath": "/data"}]}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "www"}, "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "16Mi"}}}}]}}))
    .unwrap();
    sets.create(&PostParams::default(), &set).await.unwrap();
    for i in 0..3 {
        wait_phase(&pods, &format!("web-{i}"), "Running").await;
    }
    let dir_of = |pv: PersistentVolume| host_path(&pv);
    let pv1 = bound_volume(&claims, "www-web-1").await;
    let dir1 = dir_of(volumes.get(&pv1).await.unwrap());
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    eventually(30, "web-1 wrote its id", || async {
        let id = read(dir1.join("id"));
        (id.trim() == "web-1").then_some(()).ok_or(id)
    })
    .await;

    // Deleting web-1 brings back web-1 on the same claim, and it sees the
    // data the first one wrote.
    let old_uid = pods.get("web-1").await.unwrap().metadata.uid.unwrap();
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually(90, "a new web-1 Running", || async {
        let p = pods.get_opt("web-1").await.map_err(|e| e.to_string())?;
        let p = p.ok_or("no web-1")?;
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        (p.metadata.uid.as_deref() != Some(old_uid.as_str()) && running)
            .then_some(())
            .ok_or_else(|| format!("{:?}", p.status.map(|s| s.phase)))
    })
    .await;
    let p = pods.get("web-1").await.unwrap();
    let vol = p.spec.unwrap().volumes.unwrap_or_default();
    assert!(
        vol.iter().any(|v| v
            .persistent_volume_claim
            .as_ref()
            .is_some_and(|c| c.claim_name == "www-web-1")),
        "{vol:?}"
    );
    assert_eq!(bound_volume(&claims, "www-web-1").await, pv1);
    eventually(30, "the new web-1 saw the old data", || async {
        let log = read(dir1.join("log"));
        (log.lines().collect::<Vec<_>>() == ["start-none", "start-web-1"])
            .then_some(())
            .ok_or(log)
    })
    .await;

    // Scaling down removes the highest ordinals and keeps their claims.
    sets.patch(
        "web",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    wait_gone(&pods, "web-2", 60).await;
    wait_gone(&pods, "web-1", 60).await;
    assert!(pods.get_opt("web-0").await.unwrap().is_some());
    for i in 0..3 {
        bound_volume(&claims, &format!("www-web-{i}")).await;
    }
    assert_eq!(read(dir1.join("id")).trim(), "web-1");

    sets.delete("web", &DeleteParams::default()).await.unwrap();
    wait_gone(&pods, "web-0", 60).await;
}
