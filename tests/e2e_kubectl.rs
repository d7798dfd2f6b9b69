//! End to end with the real kubectl against a real `shoal server` process.

mod common;

use common::Server;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

const KUBECTL: &str = "/usr/bin/kubectl";

fn kubectl(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(KUBECTL)
        .env("KUBECONFIG", &s.kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(s: &Server, args: &[&str]) -> String {
    let (good, out, err) = kubectl(s, args);
    assert!(
        good,
        "kubectl {args:?} failed:\nstdout: {out}\nstderr: {err}"
    );
    out
}

fn apply_stdin(s: &Server, ns: &str, manifest: &str) -> String {
    let mut child = Command::new(KUBECTL)
        .env("KUBECONFIG", &s.kubeconfig)
        .args(["-n", ns, "apply", "-f", "-"])
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
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn have_kubectl() -> bool {
    if std::path::Path::new(KUBECTL).exists() {
        return true;
    }
    eprintln!("SKIP: {KUBECTL} is not installed; this test drives the real kubectl");
    false
}

const MANIFEST: &str = include_str!("../examples/web.yaml");

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn kubectl_workflow() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());

    // Namespaces: the built-in ones exist, and kubectl's typed create works.
    let nss = ok(&s, &["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(nss.contains(&format!("namespace/{ns}")), "{nss}");
    }
    ok(&s, &["create", "namespace", "e2e"]);
    let sa = ok(
        &s,
        &[
            "-n",
            "e2e",
            "get",
            "serviceaccount",
            "default",
            "-o",
            "name",
        ],
    );
    assert_eq!(sa.trim(), "serviceaccount/default");

    // apply, then apply an edited manifest: image and a port change.
    let out = apply_stdin(&s, "e2e", MANIFEST);
    assert!(out.contains("deployment.apps/web created"), "{out}");
    assert!(out.contains("service/web created"), "{out}");
    assert!(out.contains("configmap/web-config created"), "{out}");
    let edited = MANIFEST
        .replace("busybox:1.36", "busybox:1.37")
        .replace("containerPort: 8080", "containerPort: 9090")
        .replace("targetPort: 8080", "targetPort: 9090")
        .replace("port: 80\n", "port: 8000\n");
    let out = apply_stdin(&s, "e2e", &edited);
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    assert!(out.contains("configmap/web-config unchanged"), "{out}");
    let d = json(&ok(
        &s,
        &["-n", "e2e", "get", "deployment", "web", "-o", "json"],
    ));
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(c.as_array().unwrap().len(), 1);
    assert_eq!(c[0]["image"], "busybox:1.37");
    assert_eq!(
        c[0]["ports"],
        serde_json::json!([{"containerPort": 9090, "name": "http", "protocol": "TCP"}])
    );
    assert_eq!(c[0]["env"][0]["name"], "GREETING");
    assert_eq!(d["metadata"]["generation"], 2);
    let svc = json(&ok(
        &s,
        &["-n", "e2e", "get", "service", "web", "-o", "json"],
    ));
    assert_eq!(
        svc["spec"]["ports"],
        serde_json::json!([{"name": "http", "port": 8000, "protocol": "TCP", "targetPort": 9090}])
    );

    // get -o yaml shows the stored object with server-set fields.
    let y = ok(&s, &["-n", "e2e", "get", "deployment", "web", "-o", "yaml"]);
    assert!(
        y.contains("image: busybox:1.37") && y.contains("uid:") && y.contains("resourceVersion:"),
        "{y}"
    );

    // Server-side table columns.
    let t = ok(&s, &["-n", "e2e", "get", "deployments"]);
    assert!(
        t.starts_with("NAME")
            && t.contains("READY")
            && t.contains("UP-TO-DATE")
            && t.contains("AVAILABLE"),
        "{t}"
    );
    let t = ok(&s, &["-n", "e2e", "get", "services"]);
    assert!(
        t.contains("TYPE") && t.contains("PORT(S)") && t.contains("8000/TCP"),
        "{t}"
    );

    // get -w sees a change made by another command.
    let mut watch = Command::new(KUBECTL)
        .env("KUBECONFIG", &s.kubeconfig)
        // (kube-root-ca.crt is published into every namespace by the host.)
        .args(["-n", "e2e", "get", "configmaps", "-w", "-o", "name"])
        .arg("--field-selector=metadata.name!=kube-root-ca.crt")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The first line is the existing object: the watch is established after it.
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watch printed the initial list");
    assert_eq!(first, "configmap/web-config");
    ok(
        &s,
        &[
            "-n",
            "e2e",
            "create",
            "configmap",
            "watched",
            "--from-literal=a=b",
        ],
    );
    let seen = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("watch saw the new configmap");
    assert_eq!(seen, "configmap/watched");
    let _ = watch.kill();
    let _ = watch.wait();

    // label, annotate, scale, patch --type=json.
    ok(
        &s,
        &["-n", "e2e", "label", "deployment", "web", "tier=frontend"],
    );
    ok(
        &s,
        &["-n", "e2e", "annotate", "deployment", "web", "team=storage"],
    );
    ok(
        &s,
        &["-n", "e2e", "scale", "deployment", "web", "--replicas=4"],
    );
    ok(
        &s,
        &[
            "-n",
            "e2e",
            "patch",
            "deployment",
            "web",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/spec/minReadySeconds","value":7}]"#,
        ],
    );
    let d = json(&ok(
        &s,
        &["-n", "e2e", "get", "deployment", "web", "-o", "json"],
    ));
    assert_eq!(d["metadata"]["labels"]["tier"], "frontend");
    assert_eq!(d["metadata"]["annotations"]["team"], "storage");
    assert_eq!(d["spec"]["replicas"], 4);
    assert_eq!(d["spec"]["minReadySeconds"], 7);
    let sel = ok(
        &s,
        &[
            "-n",
            "e2e",
            "get",
            "deployments",
            "-l",
            "tier=frontend",
            "-o",
            "name",
        ],
    );
    assert_eq!(sel.trim(), "deployment.apps/web");
    let sel = ok(
        &s,
        &[
            "-n",
            "e2e",
            "get",
            "deployments",
            "-l",
            "tier!=frontend",
            "-o",
            "name",
        ],
    );
    assert_eq!(sel.trim(), "");

    // Bad input: a clear 4xx with the field named.
    let (good, _, err) = kubectl(
        &s,
        &[
            "-n",
            "e2e",
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":-1}}"#,
        ],
    );
    assert!(!good && err.contains("spec.replicas"), "{err}");
    let (good, _, err) = kubectl(
        &s,
        &[
            "-n",
            "e2e",
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"selector":{"matchLabels":{"app":"other"}}}}"#,
        ],
    );
    assert!(!good && err.contains("spec.selector"), "{err}");
    let (good, _, err) = kubectl(&s, &["get", "--raw", "/api/v1/nonsense"]);
    assert!(!good && err.contains("NotFound"), "{err}");

    // Discovery and raw access.
    let ar = ok(&s, &["api-resources"]);
    for r in [
        "deployments",
        "configmaps",
        "leases",
        "endpointslices",
        "clusterroles",
    ] {
        assert!(ar.contains(r), "{ar}");
    }
    let raw = json(&ok(
        &s,
        &["get", "--raw", "/api/v1/namespaces/e2e/configmaps"],
    ));
    assert_eq!(raw["kind"], "ConfigMapList");
    // web-config, watched, and the host's kube-root-ca.crt.
    assert_eq!(raw["items"].as_array().unwrap().len(), 3);

    // delete waits for removal.
    ok(&s, &["-n", "e2e", "delete", "deployment", "web"]);
    let (good, _, err) = kubectl(&s, &["-n", "e2e", "get", "deployment", "web"]);
    assert!(!good && err.contains("NotFound"), "{err}");

    // Deleting a namespace empties it and removes it; kubectl waits for that.
    ok(&s, &["delete", "namespace", "e2e", "--timeout=60s"]);
    let (good, _, err) = kubectl(&s, &["get", "namespace", "e2e"]);
    assert!(!good && err.contains("NotFound"), "{err}");
    let (good, _, err) = kubectl(
        &s,
        &[
            "-n",
            "e2e",
            "create",
            "configmap",
            "late",
            "--from-literal=a=b",
        ],
    );
    assert!(!good && err.contains("not found"), "{err}");
    assert!(s.stop(), "server exits cleanly on SIGTERM");
}
