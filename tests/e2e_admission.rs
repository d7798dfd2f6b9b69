//! End to end: the admission chain through the real kubectl. The Rust example
//! plugins (`deny-latest`, `defaults`), installing, updating and removing
//! plugins without a restart, failure policies for plugins that trap or hang,
//! the sandbox, and the LimitRanger and ResourceQuota built-ins.

mod common;

use common::Server;
use serde_json::Value;
use shoal_host::plugin::artifacts;
use std::process::Command;
use std::time::{Duration, Instant};

use common::kubectl::have_kubectl;

fn kubectl(s: &Server, args: &[&str]) -> (bool, String, String) {
    common::kubectl::run(&s.kubeconfig, args, None)
}

/// kubectl that must succeed; returns (stdout, stderr).
fn ok(s: &Server, args: &[&str]) -> (String, String) {
    common::kubectl::ok(&s.kubeconfig, args)
}

/// kubectl that must fail; returns stderr.
fn fails(s: &Server, args: &[&str]) -> String {
    common::kubectl::fails(&s.kubeconfig, args)
}

fn apply(s: &Server, manifest: &str) {
    common::kubectl::applied(&s.kubeconfig, manifest);
}

/// `shoal plugin install --kind admission ...`; panics with the output on failure.
fn install(s: &Server, name: &str, file: &str, extra: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "plugin",
            "install",
            "--kind",
            "admission",
            "--name",
            name,
            file,
        ])
        .args(extra)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shoal plugin install {name} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pod_json(s: &Server, ns: &str, name: &str) -> Value {
    let (out, _) = ok(s, &["-n", ns, "get", "pod", name, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

/// Retry `f` until it returns Some or the deadline passes (for changes that
/// no watch announces to the test, e.g. a plugin's removal reaching the chain).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rust_plugins_admit_reject_and_warn_through_kubectl() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    install(
        &s,
        "deny-latest",
        artifacts::DENY_LATEST_PATH,
        &["--resources", "pods,deployments"],
    );

    // :latest and untagged images are refused, naming the container.
    let err = fails(&s, &["run", "web", "--image=nginx:latest"]);
    assert!(
        err.contains("Error from server (Forbidden): admission webhook \"deny-latest\" denied the request: container \"web\" image \"nginx:latest\" uses the :latest tag"),
        "{err}"
    );
    let err = fails(&s, &["run", "bare", "--image=busybox"]);
    assert!(
        err.contains("container \"bare\" image \"busybox\" has no tag (which means :latest)"),
        "{err}"
    );
    // Workloads with a pod template too.
    let err = fails(&s, &["create", "deployment", "d", "--image=nginx"]);
    assert!(
        err.contains("denied the request: container \"nginx\" image \"nginx\" has no tag"),
        "{err}"
    );
    // A tagged image passes, with the plugin's warning printed by kubectl.
    let (out, err) = ok(&s, &["run", "tagged", "--image=busybox:1.36"]);
    assert!(out.contains("pod/tagged created"), "{out}");
    assert!(
        err.contains(
            "Warning: container \"tagged\" image \"busybox:1.36\" is not pinned by digest"
        ),
        "{err}"
    );
    // A digest passes without a warning.
    let (_, err) = ok(
        &s,
        &["run", "pinned", "--image=busybox@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"],
    );
    assert!(!err.contains("Warning"), "{err}");
    // Nothing refused was stored.
    let (out, _) = ok(&s, &["get", "pods", "-o", "name"]);
    assert!(
        !out.contains("pod/web") && !out.contains("pod/bare"),
        "{out}"
    );

    // The mutating plugin fills in requests and the team label.
    install(
        &s,
        "defaults",
        artifacts::DEFAULTS_PATH,
        &[
            "--mutating",
            "--config",
            r#"{"cpu": "100m", "memory": "64Mi", "team": "platform"}"#,
        ],
    );
    ok(&s, &["run", "plain", "--image=busybox:1.36"]);
    let p = pod_json(&s, "default", "plain");
    assert_eq!(p["metadata"]["labels"]["team"], "platform", "{p}");
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "100m"
    );
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"]["memory"],
        "64Mi"
    );
    // What the pod states itself is kept.
    ok(
        &s,
        &[
            "run",
            "sized",
            "--image=busybox:1.36",
            "--labels=team=storage",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"sized","image":"busybox:1.36","resources":{"requests":{"cpu":"250m"}}}]}}"#,
        ],
    );
    let p = pod_json(&s, "default", "sized");
    assert_eq!(p["metadata"]["labels"]["team"], "storage", "{p}");
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "250m"
    );
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["requests"]["memory"],
        "64Mi"
    );
    // The validating plugin sees the mutated object: still refused.
    let err = fails(&s, &["run", "latest2", "--image=nginx:latest"]);
    assert!(err.contains("deny-latest"), "{err}");
    assert!(s.stop());
}

#[test]
fn installing_updating_and_removing_takes_effect_without_restart() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    ok(&s, &["run", "before", "--image=nginx:latest"]);
    install(&s, "deny-latest", artifacts::DENY_LATEST_PATH, &[]);
    // `shoal plugin install` returns once the plugin is Ready, i.e. published.
    let err = fails(&s, &["run", "after", "--image=nginx:latest"]);
    assert!(err.contains("deny-latest"), "{err}");

    // Update: rules now cover deployments only, so pods pass again.
    install(
        &s,
        "deny-latest",
        artifacts::DENY_LATEST_PATH,
        &["--resources", "deployments"],
    );
    ok(&s, &["run", "updated", "--image=nginx:latest"]);
    let err = fails(&s, &["create", "deployment", "d", "--image=nginx:latest"]);
    assert!(err.contains("deny-latest"), "{err}");

    // Config update of a mutating plugin: new pods get the new label.
    install(
        &s,
        "defaults",
        artifacts::DEFAULTS_PATH,
        &["--mutating", "--config", r#"{"team": "a"}"#],
    );
    ok(&s, &["run", "team-a", "--image=busybox:1.36"]);
    assert_eq!(
        pod_json(&s, "default", "team-a")["metadata"]["labels"]["team"],
        "a"
    );
    install(
        &s,
        "defaults",
        artifacts::DEFAULTS_PATH,
        &["--mutating", "--config", r#"{"team": "b"}"#],
    );
    ok(&s, &["run", "team-b", "--image=busybox:1.36"]);
    assert_eq!(
        pod_json(&s, "default", "team-b")["metadata"]["labels"]["team"],
        "b"
    );

    // Removal: the Plugin object goes, and soon so does its effect.
    ok(&s, &["delete", "plugins.plugins.shoal.dev", "deny-latest"]);
    let mut n = 0;
    eventually("deny-latest's removal to reach the chain", || {
        n += 1;
        let name = format!("d{n}");
        kubectl(&s, &["create", "deployment", &name, "--image=nginx:latest"])
            .0
            .then_some(())
    });
    // The server never restarted.
    assert!(s.stop());
}

#[test]
fn failing_plugins_apply_their_failure_policy() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    let trap = r#"{"mode": "trap"}"#;
    let hang = r#"{"mode": "loop"}"#;

    // Fail: the request fails with a server error naming the plugin.
    install(
        &s,
        "trap",
        artifacts::FAULT_ADMISSION_PATH,
        &["--config", trap],
    );
    let err = fails(&s, &["run", "t1", "--image=busybox:1.36"]);
    assert!(
        err.contains("Error from server (InternalError): Internal error occurred: failed calling admission plugin \"trap\""),
        "{err}"
    );
    assert!(err.contains("trapped"), "{err}");
    // Again: the poisoned instance was replaced, and the plugin fails the same way.
    let err = fails(&s, &["run", "t2", "--image=busybox:1.36"]);
    assert!(err.contains("trapped"), "{err}");
    // Ignore: the request proceeds.
    install(
        &s,
        "trap",
        artifacts::FAULT_ADMISSION_PATH,
        &["--config", trap, "--failure-policy", "Ignore"],
    );
    ok(&s, &["run", "t3", "--image=busybox:1.36"]);
    ok(&s, &["delete", "plugins.plugins.shoal.dev", "trap"]);

    // A plugin that never returns is stopped at its timeout.
    install(
        &s,
        "hang",
        artifacts::FAULT_ADMISSION_PATH,
        &["--config", hang, "--timeout-seconds", "1"],
    );
    let started = Instant::now();
    let err = fails(&s, &["run", "h1", "--image=busybox:1.36"]);
    assert!(
        err.contains("failed calling admission plugin \"hang\""),
        "{err}"
    );
    assert!(err.contains("timed out after 1s"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    install(
        &s,
        "hang",
        artifacts::FAULT_ADMISSION_PATH,
        &[
            "--config",
            hang,
            "--timeout-seconds",
            "1",
            "--failure-policy",
            "Ignore",
        ],
    );
    ok(&s, &["run", "h2", "--image=busybox:1.36"]);
    // Only pods are reviewed: other requests never waited.
    ok(&s, &["create", "configmap", "cm", "--from-literal=a=b"]);
    let (out, _) = ok(&s, &["get", "pods", "-o", "name"]);
    assert!(out.contains("pod/t3") && out.contains("pod/h2"), "{out}");
    assert!(!out.contains("pod/t1") && !out.contains("pod/h1"), "{out}");

    // Bad admission specs are refused by the API with field errors.
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "plugin",
            "install",
            "--kind",
            "admission",
            "--name",
            "bad",
            artifacts::DENY_LATEST_PATH,
            "--failure-policy",
            "Sometimes",
            "--operations",
            "PATCH",
            "--kubeconfig",
        ])
        .arg(&s.kubeconfig)
        .output()
        .unwrap();
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        msg.contains("spec.admission.failurePolicy: Unsupported value: \"Sometimes\""),
        "{msg}"
    );
    assert!(
        msg.contains("spec.admission.rules[0].operations[0]: Unsupported value: \"PATCH\""),
        "{msg}"
    );
    assert!(s.stop());
}

#[test]
fn plugins_cannot_read_host_files_or_open_sockets() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    // A listener the plugin will try to reach.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let config = format!(r#"{{"mode": "sandbox", "connect": "{addr}"}}"#);
    install(
        &s,
        "probe",
        artifacts::FAULT_ADMISSION_PATH,
        &["--config", &config],
    );
    let err = fails(&s, &["run", "p", "--image=busybox:1.36"]);
    // The plugin reports what it got: refusals, no data.
    assert!(
        err.contains("admission webhook \"probe\" denied the request: sandbox probe:"),
        "{err}"
    );
    assert!(err.contains("read /etc/passwd: refused"), "{err}");
    assert!(!err.contains("root:"), "{err}");
    assert!(err.contains(&format!("connect {addr}: refused")), "{err}");
    assert!(err.contains("env HOME: unset"), "{err}");
    // And nothing reached the listener.
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the plugin reached the host's socket: {other:?}"),
    }
    assert!(s.stop());
}

#[test]
fn limitranger_and_resourcequota_built_ins() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    ok(&s, &["create", "namespace", "team"]);
    apply(
        &s,
        r#"
apiVersion: v1
kind: LimitRange
metadata: {name: limits, namespace: team}
spec:
  limits:
  - type: Container
    default: {cpu: 200m, memory: 128Mi}
    defaultRequest: {cpu: 100m}
    max: {cpu: "1"}
    min: {cpu: 50m}
"#,
    );
    // Defaults are applied to a pod that states nothing.
    ok(&s, &["-n", "team", "run", "plain", "--image=busybox:1.36"]);
    let p = pod_json(&s, "team", "plain");
    let r = &p["spec"]["containers"][0]["resources"];
    assert_eq!(r["requests"]["cpu"], "100m", "{p}");
    assert_eq!(r["requests"]["memory"], "128Mi", "{p}");
    assert_eq!(r["limits"]["cpu"], "200m", "{p}");
    assert!(p["metadata"]["annotations"]["kubernetes.io/limit-ranger"]
        .as_str()
        .unwrap()
        .starts_with("LimitRanger plugin set:"));
    // Over max and under min are forbidden with Kubernetes' messages.
    let err = fails(
        &s,
        &[
            "-n",
            "team",
            "run",
            "big",
            "--image=busybox:1.36",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"big","image":"busybox:1.36","resources":{"limits":{"cpu":"2"}}}]}}"#,
        ],
    );
    assert!(
        err.contains("Error from server (Forbidden): pods \"big\" is forbidden: maximum cpu usage per Container is 1, but limit is 2"),
        "{err}"
    );
    let err = fails(
        &s,
        &[
            "-n",
            "team",
            "run",
            "tiny",
            "--image=busybox:1.36",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"tiny","image":"busybox:1.36","resources":{"requests":{"cpu":"10m"}}}]}}"#,
        ],
    );
    assert!(
        err.contains("minimum cpu usage per Container is 50m, but request is 10m"),
        "{err}"
    );

    // A quota of 2 pods: "plain" counts, one more fits, the next does not.
    apply(
        &s,
        r#"
apiVersion: v1
kind: ResourceQuota
metadata: {name: small, namespace: team}
spec:
  hard: {pods: "2", requests.cpu: "1"}
"#,
    );
    let used = |s: &Server| -> Value {
        let (out, _) = ok(
            s,
            &["-n", "team", "get", "resourcequota", "small", "-o", "json"],
        );
        let q: Value = serde_json::from_str(&out).unwrap();
        q["status"]["used"].clone()
    };
    eventually("the quota controller to report usage", || {
        (used(&s)["pods"] == "1").then_some(())
    });
    ok(&s, &["-n", "team", "run", "second", "--image=busybox:1.36"]);
    let err = fails(&s, &["-n", "team", "run", "third", "--image=busybox:1.36"]);
    assert!(
        err.contains("Error from server (Forbidden): pods \"third\" is forbidden: exceeded quota: small, requested: pods=1, used: pods=2, limited: pods=2"),
        "{err}"
    );
    let u = eventually("usage of 2 pods", || {
        let u = used(&s);
        (u["pods"] == "2").then_some(u)
    });
    assert_eq!(u["requests.cpu"], "200m", "{u}");
    // Deleting a pod releases its share.
    ok(
        &s,
        &["-n", "team", "delete", "pod", "second", "--wait=false"],
    );
    eventually("the quota to release the deleted pod", || {
        kubectl(&s, &["-n", "team", "run", "third", "--image=busybox:1.36"])
            .0
            .then_some(())
    });
    assert!(s.stop());
}

#[test]
fn plugins_get_the_kinds_they_ask_for_through_observe() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    ok(&s, &["create", "configmap", "before", "--from-literal=a=b"]);
    // In "view" mode the plugin asks for ConfigMaps and denies every pod,
    // listing the ConfigMaps in its view.
    install(
        &s,
        "viewer",
        artifacts::FAULT_ADMISSION_PATH,
        &["--config", r#"{"mode": "view"}"#],
    );
    let view = |s: &Server| -> String {
        let err = fails(s, &["run", "p", "--image=busybox:1.36"]);
        let at = err.find("view: ").unwrap_or_else(|| panic!("{err}"));
        err[at..].trim().to_string()
    };
    // The snapshot: what existed when the instance started.
    assert!(view(&s).contains("default/before"), "{}", view(&s));
    // Changes arrive through observe, on the same (pooled) instance.
    ok(&s, &["create", "configmap", "later", "--from-literal=a=b"]);
    eventually("the new ConfigMap in the plugin's view", || {
        view(&s).contains("default/later").then_some(())
    });
    ok(&s, &["delete", "configmap", "before"]);
    eventually("the deleted ConfigMap to leave the view", || {
        let v = view(&s);
        (!v.contains("default/before") && v.contains("default/later")).then_some(())
    });
    assert!(s.stop());
}

#[test]
fn connect_requests_are_admitted() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path());
    ok(&s, &["run", "p", "--image=busybox:1.36"]);
    // A plugin for CONNECT on pods/exec only: creates are not reviewed...
    install(
        &s,
        "exec-guard",
        artifacts::FAULT_ADMISSION_PATH,
        &[
            "--operations",
            "CONNECT",
            "--resources",
            "pods/exec",
            "--config",
            r#"{"mode": "sandbox"}"#,
        ],
    );
    ok(&s, &["run", "q", "--image=busybox:1.36"]);
    // ...but `kubectl exec` is refused before the server contacts any node.
    let err = fails(&s, &["exec", "p", "--", "true"]);
    assert!(
        err.contains("Error from server (Forbidden): admission webhook \"exec-guard\" denied the request: sandbox probe:"),
        "{err}"
    );
    assert!(s.stop());
}
