//! Admission plugins written in Python (componentize-py) and JavaScript
//! (componentize-js): each is built from plugins/<name>/ with its build.sh
//! (into target/polyglot/, reused while its inputs are unchanged), then
//! loaded by the host's plugin runtime and asked to review requests, and
//! installed with `shoal plugin install` into a real server, where the real
//! kubectl sees their decisions.
//!
//! The toolchains come from PyPI and npm; `scripts/test.sh` installs them.
//! Without them the tests skip with a message, except under `CI=true`, where
//! a missing toolchain fails them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::Server;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use shoal_host::plugin::{
    AdmissionInstance, AdmissionResponse, LoadedPlugin, PluginError, PluginKind, PluginRuntime,
    RuntimeConfig,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli/ has a parent")
        .to_path_buf()
}

/// Where built components and the compiled-code cache go.
fn out_root() -> PathBuf {
    repo().join("target").join("polyglot")
}

/// One plugin in another language: its folder, component file and inputs.
struct Plugin {
    dir: &'static str,
    wasm: &'static str,
    /// Files (relative to the plugin's folder) whose contents decide the build.
    inputs: &'static [&'static str],
}

const REQUIRE_LABELS: Plugin = Plugin {
    dir: "plugins/require-labels-py",
    wasm: "require-labels.wasm",
    inputs: &["app.py", "build.sh"],
};

const DENY_PRIVILEGED: Plugin = Plugin {
    dir: "plugins/deny-privileged-js",
    wasm: "deny-privileged.wasm",
    inputs: &["app.js", "build.sh", "package-lock.json"],
};

/// Whether a missing toolchain must fail the test rather than skip it.
fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// Builds `p` (or reuses the last build of the same inputs) and returns the
/// component's path; `None` (after saying why) when its toolchain is missing
/// outside CI.
fn build(p: &Plugin) -> Option<PathBuf> {
    // Tests run in parallel threads; one build of each plugin at a time.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _one = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = repo().join(p.dir);
    let mut h = Sha256::new();
    for f in p.inputs.iter().map(|f| dir.join(f)) {
        h.update(f.file_name().unwrap().as_encoded_bytes());
        h.update(std::fs::read(&f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display())));
    }
    h.update(std::fs::read(repo().join("wit/plugin.wit")).expect("reading wit/plugin.wit"));
    let digest = hex::encode(&h.finalize()[..8]);
    let out = out_root().join(format!("{}-{digest}", p.wasm.trim_end_matches(".wasm")));
    let wasm = out.join(p.wasm);
    if wasm.is_file() {
        eprintln!("{}: reusing {} (inputs unchanged)", p.wasm, wasm.display());
        return Some(wasm);
    }
    // Build into a scratch folder and move it in whole, so an interrupted
    // build is never taken for a finished one.
    let scratch = out_root().join(format!(".build-{}-{}", p.wasm, std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let started = Instant::now();
    let result = Command::new("bash")
        .arg(dir.join("build.sh"))
        .arg(&scratch)
        .output()
        .expect("run bash");
    let stderr = String::from_utf8_lossy(&result.stderr);
    if result.status.code() == Some(127) {
        let _ = std::fs::remove_dir_all(&scratch);
        let why = format!(
            "toolchain for {} is missing (scripts/test.sh installs it):\n{stderr}",
            p.dir
        );
        assert!(!required(), "{why}");
        eprintln!("SKIP: {why}");
        return None;
    }
    assert!(
        result.status.success(),
        "{}/build.sh failed ({}):\nstdout: {}\nstderr: {stderr}",
        p.dir,
        result.status,
        String::from_utf8_lossy(&result.stdout),
    );
    let size = std::fs::metadata(scratch.join(p.wasm))
        .unwrap_or_else(|e| panic!("{}/build.sh made no {}: {e}", p.dir, p.wasm))
        .len();
    eprintln!(
        "{}: built in {:.1?}, {:.1} MB",
        p.wasm,
        started.elapsed(),
        size as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&scratch, &out).expect("move the build into place");
    // Builds of older sources are not needed again.
    let stem = format!("{}-", p.wasm.trim_end_matches(".wasm"));
    for e in std::fs::read_dir(out_root()).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&stem) && e.path() != out {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    Some(wasm)
}

/// The runtime all tests of this binary share, with its compiled-code cache
/// under target/polyglot.
fn runtime() -> &'static PluginRuntime {
    static RUNTIME: OnceLock<PluginRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        PluginRuntime::new(RuntimeConfig {
            cache_dir: Some(out_root().join("wasmtime-cache")),
            limits: Default::default(),
        })
        .expect("plugin runtime")
    })
}

/// Loads (compiles, or takes from the on-disk cache) a component once per
/// process, named after its file, printing the time it took.
fn load(wasm: &Path) -> LoadedPlugin {
    static LOADED: Mutex<BTreeMap<PathBuf, LoadedPlugin>> = Mutex::new(BTreeMap::new());
    // Held while compiling: parallel tests wait for one compilation rather
    // than compile the same component twice on a small machine.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = loaded.get(wasm) {
        return l.clone();
    }
    let name = wasm.file_stem().unwrap().to_string_lossy().into_owned();
    let bytes = std::fs::read(wasm).expect("read component");
    let started = Instant::now();
    let l = runtime()
        .load(&name, PluginKind::Admission, &bytes)
        .unwrap_or_else(|e| panic!("loading {}: {e}", wasm.display()));
    eprintln!(
        "{name}: load {:.1?} (from cache: {})",
        started.elapsed(),
        l.from_cache()
    );
    loaded.insert(wasm.to_path_buf(), l.clone());
    l
}

/// A configured instance, printing instantiate and configure times.
async fn instance(loaded: &LoadedPlugin, config: &Value) -> AdmissionInstance {
    let started = Instant::now();
    let mut inst = loaded.instantiate_admission().await.expect("instantiate");
    let instantiated = started.elapsed();
    inst.configure(&config.to_string())
        .await
        .unwrap_or_else(|e| panic!("configure {config}: {e}"));
    eprintln!(
        "{}: instantiate {instantiated:.1?}, configure {:.1?}",
        loaded.name(),
        started.elapsed() - instantiated
    );
    inst
}

/// An AdmissionReview `request` as the host sends it.
fn request(operation: &str, kind: &str, object: Option<Value>) -> String {
    let (group, version, resource) = match kind {
        "Deployment" => ("apps", "v1", "deployments"),
        "CronJob" => ("batch", "v1", "cronjobs"),
        "ConfigMap" => ("", "v1", "configmaps"),
        _ => ("", "v1", "pods"),
    };
    let name = object
        .as_ref()
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap_or("gone")
        .to_string();
    json!({
        "uid": "00000000-0000-0000-0000-000000000001",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "name": name,
        "namespace": "default",
        "operation": operation,
        "userInfo": {"username": "alice", "groups": ["system:authenticated"]},
        "object": object,
        "oldObject": null,
        "dryRun": false,
    })
    .to_string()
}

fn pod(name: &str, labels: Value, containers: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels},
        "spec": {"containers": containers},
    })
}

async fn review(inst: &mut AdmissionInstance, req: &str) -> AdmissionResponse {
    inst.review(req).await.expect("review")
}

/// p50 and p99 of `n` review calls of `req`.
async fn time_calls(inst: &mut AdmissionInstance, req: &str, n: usize) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        review(inst, req).await;
        times.push(t.elapsed());
    }
    times.sort();
    (times[n / 2], times[n * 99 / 100])
}

#[tokio::test]
async fn require_labels_python_reviews() {
    let Some(wasm) = build(&REQUIRE_LABELS) else {
        return;
    };
    let loaded = load(&wasm);
    let mut inst = instance(&loaded, &json!({"labels": ["team", "app"]})).await;
    assert_eq!(inst.interests().await.unwrap(), Vec::<String>::new());

    let both = pod("web", json!({"team": "a", "app": "web"}), json!([]));
    let r = review(&mut inst, &request("CREATE", "Pod", Some(both))).await;
    assert!(r.allowed, "both labels present: {r:?}");
    assert_eq!(r.message, None);

    let one = pod("web", json!({"team": "a"}), json!([]));
    let r = review(&mut inst, &request("CREATE", "Pod", Some(one))).await;
    assert!(!r.allowed, "app missing: {r:?}");
    assert_eq!(r.code, Some(403));
    assert_eq!(
        r.message.as_deref(),
        Some("Pod \"web\" is missing required label: app")
    );

    let none = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}});
    let r = review(&mut inst, &request("UPDATE", "ConfigMap", Some(none))).await;
    assert!(!r.allowed);
    assert_eq!(
        r.message.as_deref(),
        Some("ConfigMap \"cfg\" is missing required labels: team, app")
    );

    // A delete carries no object and is not this plugin's business.
    let r = review(&mut inst, &request("DELETE", "Pod", None)).await;
    assert!(r.allowed, "delete: {r:?}");

    // Bad requests are refused with a reason, not a trap.
    let r = review(&mut inst, "not json").await;
    assert!(!r.allowed);
    assert_eq!(r.code, Some(400));
    assert!(!inst.is_poisoned());

    // Bad configs are refused with the plugin's own message.
    for (bad, says) in [
        (json!({"labels": "team"}), "\"labels\" must be a list"),
        (json!({"label": ["team"]}), "unknown config field(s): label"),
        (json!(["team"]), "config must be an object"),
    ] {
        let mut i = loaded.instantiate_admission().await.unwrap();
        match i.configure(&bad.to_string()).await {
            Err(PluginError::Guest { message, .. }) => {
                assert!(message.contains(says), "{bad}: {message}")
            }
            other => panic!("config {bad} was not refused: {other:?}"),
        }
    }
    let mut i = loaded.instantiate_admission().await.unwrap();
    assert!(matches!(
        i.configure("{not json").await,
        Err(PluginError::Guest { .. })
    ));

    let req = request(
        "CREATE",
        "Pod",
        Some(pod("web", json!({"team": "a"}), json!([]))),
    );
    let (p50, p99) = time_calls(&mut inst, &req, 200).await;
    eprintln!("require-labels (Python): review p50 {p50:?}, p99 {p99:?} over 200 calls");
    assert!(!inst.is_poisoned());
}

#[tokio::test]
async fn deny_privileged_javascript_reviews() {
    let Some(wasm) = build(&DENY_PRIVILEGED) else {
        return;
    };
    let loaded = load(&wasm);
    let mut inst = instance(&loaded, &json!({})).await;
    assert_eq!(inst.interests().await.unwrap(), Vec::<String>::new());

    // Unprivileged, escalation unset: admitted with a warning.
    let plain = pod(
        "web",
        json!({}),
        json!([{"name": "web", "image": "nginx:1"}]),
    );
    let r = review(&mut inst, &request("CREATE", "Pod", Some(plain.clone()))).await;
    assert!(r.allowed, "{r:?}");
    assert_eq!(r.warnings.len(), 1, "{r:?}");
    assert!(
        r.warnings[0]
            .contains("container \"web\" does not set securityContext.allowPrivilegeEscalation"),
        "{r:?}"
    );

    // Escalation turned off explicitly: no warning.
    let careful = pod(
        "web",
        json!({}),
        json!([{"name": "web", "image": "nginx:1",
                "securityContext": {"allowPrivilegeEscalation": false}}]),
    );
    let r = review(&mut inst, &request("CREATE", "Pod", Some(careful))).await;
    assert!(r.allowed && r.warnings.is_empty(), "{r:?}");

    // A privileged second container is refused, and named.
    let privileged = pod(
        "web",
        json!({}),
        json!([
            {"name": "web", "image": "nginx:1"},
            {"name": "debug", "image": "busybox:1", "securityContext": {"privileged": true}},
        ]),
    );
    let r = review(&mut inst, &request("CREATE", "Pod", Some(privileged))).await;
    assert!(!r.allowed, "{r:?}");
    assert_eq!(r.code, Some(403));
    assert_eq!(
        r.message.as_deref(),
        Some(
            "Pod \"web\" runs privileged container: debug \
             (spec.containers[1].securityContext.privileged); privileged containers are not allowed"
        )
    );

    // `privileged: false` is fine.
    let unprivileged = pod(
        "web",
        json!({}),
        json!([{"name": "web", "image": "nginx:1",
                "securityContext": {"privileged": false, "allowPrivilegeEscalation": false}}]),
    );
    let r = review(&mut inst, &request("UPDATE", "Pod", Some(unprivileged))).await;
    assert!(r.allowed, "{r:?}");

    // Pod templates: a Deployment's privileged init container, a CronJob's.
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"template": {"spec": {
            "initContainers": [{"name": "setup", "image": "busybox:1",
                                "securityContext": {"privileged": true}}],
            "containers": [{"name": "web", "image": "nginx:1"}],
        }}},
    });
    let r = review(&mut inst, &request("CREATE", "Deployment", Some(deploy))).await;
    assert!(!r.allowed);
    assert!(
        r.message.as_deref().unwrap().starts_with(
            "Deployment \"web\" runs privileged container: setup \
             (spec.template.spec.initContainers[0].securityContext.privileged)"
        ),
        "{r:?}"
    );
    let cron = json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "default"},
        "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {"spec": {
            "containers": [{"name": "a", "image": "busybox:1", "securityContext": {"privileged": true}},
                           {"name": "b", "image": "busybox:1", "securityContext": {"privileged": true}}],
        }}}}},
    });
    let r = review(&mut inst, &request("CREATE", "CronJob", Some(cron))).await;
    assert!(!r.allowed);
    assert!(
        r.message
            .as_deref()
            .unwrap()
            .starts_with("CronJob \"nightly\" runs privileged containers: a ("),
        "{r:?}"
    );

    // Other kinds and deletes pass untouched.
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    assert!(
        review(&mut inst, &request("CREATE", "ConfigMap", Some(cm)))
            .await
            .allowed
    );
    assert!(
        review(&mut inst, &request("DELETE", "Pod", None))
            .await
            .allowed
    );
    let r = review(&mut inst, "[").await;
    assert!(!r.allowed && r.code == Some(400), "{r:?}");

    // Config: the warning can be turned off; unknown fields are refused.
    let mut quiet = instance(&loaded, &json!({"warnAllowPrivilegeEscalation": false})).await;
    let r = review(&mut quiet, &request("CREATE", "Pod", Some(plain.clone()))).await;
    assert!(r.allowed && r.warnings.is_empty(), "{r:?}");
    let mut i = loaded.instantiate_admission().await.unwrap();
    match i.configure(r#"{"warn": true}"#).await {
        Err(PluginError::Guest { message, .. }) => {
            assert!(
                message.contains("unknown config field \"warn\""),
                "{message}"
            )
        }
        other => panic!("unknown field was not refused: {other:?}"),
    }

    let req = request("CREATE", "Pod", Some(plain));
    let (p50, p99) = time_calls(&mut inst, &req, 200).await;
    eprintln!("deny-privileged (JavaScript): review p50 {p50:?}, p99 {p99:?} over 200 calls");
    assert!(!inst.is_poisoned());
}

/// Runs kubectl, optionally with `stdin`; returns (success, stdout, stderr).
fn kubectl(s: &Server, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    common::kubectl::run(&s.kubeconfig, args, stdin)
}

/// `kubectl apply -f -` of `manifest`, which must succeed; returns stderr.
fn applied(s: &Server, manifest: &str) -> String {
    let (good, out, err) = kubectl(s, &["apply", "-f", "-"], Some(manifest));
    assert!(
        good,
        "apply failed:\n{manifest}\nstdout: {out}\nstderr: {err}"
    );
    err
}

/// `kubectl apply -f -` of `manifest`, which must be refused; returns stderr.
fn refused(s: &Server, manifest: &str) -> String {
    let (good, out, err) = kubectl(s, &["apply", "-f", "-"], Some(manifest));
    assert!(
        !good,
        "apply was admitted:\n{manifest}\nstdout: {out}\nstderr: {err}"
    );
    err
}

/// `shoal plugin install --kind admission`, timed.
fn install(s: &Server, name: &str, wasm: &Path, extra: &[&str]) {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["plugin", "install", "--kind", "admission", "--name", name])
        .arg(wasm)
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
    eprintln!(
        "{name}: shoal plugin install took {:.1?}",
        started.elapsed()
    );
}

/// Copies the compiled-code cache filled by this test's runtime into a new
/// server's data dir, so the server finds the components compiled (as after
/// a restart) instead of spending half a minute per plugin compiling them in
/// a debug build. Load times without the cache are printed by the tests above.
fn seed_compile_cache(wasms: &[&Path], data_dir: &Path) {
    for w in wasms {
        load(w);
    }
    fn copy(from: &Path, to: &Path) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(to)
            .unwrap();
        for e in std::fs::read_dir(from).unwrap().flatten() {
            let target = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &target);
            } else if e.file_name().to_string_lossy().ends_with(".cwasm") {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }
    copy(
        &out_root().join("wasmtime-cache"),
        &data_dir.join("plugin-cache"),
    );
}

fn labelled_pod(name: &str, labels: &str, security: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {labels}\n\
         spec:\n  containers:\n  - name: main\n    image: busybox:1.36\n    \
         securityContext: {security}\n"
    )
}

#[test]
fn polyglot_plugins_through_the_server_and_kubectl() {
    if !common::kubectl::have_kubectl() {
        return;
    }
    let (Some(labels_wasm), Some(privileged_wasm)) =
        (build(&REQUIRE_LABELS), build(&DENY_PRIVILEGED))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    seed_compile_cache(&[&labels_wasm, &privileged_wasm], &data);
    let s = Server::start_on(&data, common::free_port(), &[]);

    // require-labels (Python) on pods and configmaps, requiring `team`.
    install(
        &s,
        "require-labels",
        &labels_wasm,
        &[
            "--config",
            r#"{"labels":["team"]}"#,
            "--resources",
            "pods,configmaps",
        ],
    );
    let (good, _, err) = kubectl(&s, &["create", "configmap", "settings"], None);
    assert!(!good, "a configmap without `team` was admitted");
    eprintln!("kubectl create configmap settings: {}", err.trim());
    assert!(
        err.contains(
            "admission webhook \"require-labels\" denied the request: \
             ConfigMap \"settings\" is missing required label: team"
        ),
        "{err}"
    );
    applied(
        &s,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {team: blue}\n",
    );
    let err = refused(&s, &labelled_pod("web", "{app: web}", "{}"));
    assert!(
        err.contains("Pod \"web\" is missing required label: team"),
        "{err}"
    );

    // deny-privileged (JavaScript) on pods and deployments.
    install(
        &s,
        "deny-privileged",
        &privileged_wasm,
        &["--resources", "pods,deployments"],
    );
    let err = refused(
        &s,
        &labelled_pod("root", "{team: blue}", "{privileged: true}"),
    );
    eprintln!("kubectl apply (privileged pod): {}", err.trim());
    assert!(
        err.contains(
            "admission webhook \"deny-privileged\" denied the request: Pod \"root\" runs \
             privileged container: main (spec.containers[0].securityContext.privileged)"
        ),
        "{err}"
    );
    // Both plugins pass it; deny-privileged's warning reaches kubectl.
    let err = applied(&s, &labelled_pod("web", "{team: blue}", "{}"));
    assert!(
        err.contains(
            "Warning: container \"main\" does not set securityContext.allowPrivilegeEscalation"
        ),
        "{err}"
    );
    let err = applied(
        &s,
        &labelled_pod(
            "careful",
            "{team: blue}",
            "{allowPrivilegeEscalation: false}",
        ),
    );
    assert!(!err.contains("Warning"), "{err}");

    // A Deployment's pod template is checked too (require-labels does not
    // cover deployments here).
    let deployment = |security: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: agent\nspec:\n  \
             selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata:\n      \
             labels: {{app: agent, team: blue}}\n    spec:\n      containers:\n      - name: agent\n        \
             image: busybox:1.36\n        securityContext: {security}\n"
        )
    };
    let err = refused(&s, &deployment("{privileged: true}"));
    assert!(
        err.contains("Deployment \"agent\" runs privileged container: agent"),
        "{err}"
    );
    applied(&s, &deployment("{allowPrivilegeEscalation: false}"));

    // Removing require-labels lifts it (the chain follows the Plugin objects;
    // nothing to watch for that, so poll with a deadline).
    let (good, _, err) = kubectl(
        &s,
        &["delete", "plugins.plugins.shoal.dev", "require-labels"],
        None,
    );
    assert!(good, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        let name = format!("unlabelled-{n}");
        if kubectl(&s, &["create", "configmap", &name], None).0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "require-labels still refuses after its removal"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(s.stop());
}
