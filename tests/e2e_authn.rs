//! End to end: authentication with the real kubectl. Static bearer tokens
//! (`--token-auth-file`), ServiceAccount tokens from `kubectl create token`
//! (TokenRequest) checked by `kubectl auth whoami` (SelfSubjectReview),
//! expiry, deletion of the ServiceAccount or bound pod, the ServiceAccount
//! admission step and the `kube-root-ca.crt` ConfigMaps; and with a real
//! agent and runc, the token, CA and namespace projected into a pod, used
//! from inside the pod by the real kubectl with its in-cluster config.
//!
//! The agent test runs in a network namespace it creates (entered by the
//! test's thread) and needs root, runc, `ip`, kubectl and a static
//! /bin/busybox; it skips with a message otherwise. The kubectl-only test
//! needs kubectl.

mod common;

use common::Server;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

fn has(bin: &str, args: &[&str]) -> bool {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A kubeconfig trusting the cluster CA with no credentials of its own.
fn anonymous_kubeconfig(server: &Server, dir: &Path) -> PathBuf {
    let path = dir.join("anon.kubeconfig");
    let ca = server.data_dir.join("pki/ca.crt");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: c\n",
            server.url,
            ca.display()
        ),
    )
    .unwrap();
    path
}

struct Kubectl {
    admin: PathBuf,
    anon: PathBuf,
}

impl Kubectl {
    fn admin(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.admin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.admin(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn with_token(&self, token: &str, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.anon)
            .arg(format!("--token={token}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `kubectl auth whoami -o json` with a token: the userInfo, or the error text.
    fn whoami(&self, token: &str) -> Result<Value, String> {
        let out = self.with_token(token, &["auth", "whoami", "-o", "json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            Ok(v["status"]["userInfo"].clone())
        } else {
            Err(text(&out.stderr))
        }
    }

    /// Poll (the server caches validated tokens for up to 10 s) until the
    /// token is refused; returns the error text.
    fn wait_refused(&self, token: &str, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.whoami(token) {
                Err(e) => return e,
                Ok(u) if Instant::now() > deadline => {
                    panic!("{what}: token still accepted as {u}")
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

/// Let every authenticated user run `kubectl auth whoami` (Kubernetes'
/// `system:basic-user` role allows `selfsubjectreviews`; granted here
/// explicitly so the test does not depend on that default).
fn allow_self_review(k: &Kubectl) {
    k.ok(&[
        "create",
        "clusterrole",
        "self-review",
        "--verb=create",
        "--resource=selfsubjectreviews.authentication.k8s.io",
    ]);
    k.ok(&[
        "create",
        "clusterrolebinding",
        "self-review",
        "--clusterrole=self-review",
        "--group=system:authenticated",
    ]);
}

fn jwt_claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[test]
fn bearer_and_service_account_tokens_with_kubectl() {
    if !has("kubectl", &["version", "--client"]) {
        eprintln!("skipping: kubectl is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tmp.path().join("tokens.csv");
    std::fs::write(
        &tokens,
        "s3cret-alice,alice,alice-uid,\"devs,ops\"\nbob-token,bob,bob-uid\n",
    )
    .unwrap();
    let server = Server::start_on(
        &tmp.path().join("server"),
        common::free_port(),
        &["--token-auth-file", tokens.to_str().unwrap()],
    );
    let k = Kubectl {
        admin: server.kubeconfig.clone(),
        anon: anonymous_kubeconfig(&server, tmp.path()),
    };

    allow_self_review(&k);

    // Static tokens.
    let alice = k.whoami("s3cret-alice").unwrap();
    assert_eq!(alice["username"], "alice");
    assert_eq!(alice["uid"], "alice-uid");
    assert_eq!(
        alice["groups"],
        json!(["devs", "ops", "system:authenticated"])
    );
    // Authenticated (discovery is open to every authenticated user), not authorized beyond.
    let out = k.with_token("s3cret-alice", &["get", "--raw", "/api"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = k.with_token("s3cret-alice", &["get", "secrets"]);
    assert!(
        text(&out.stderr).contains("Forbidden") || text(&out.stderr).contains("forbidden"),
        "{}",
        text(&out.stderr)
    );
    // A wrong token and no credentials at all: 401.
    let out = k.with_token("wrong", &["get", "pods"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Unauthorized"),
        "{}",
        text(&out.stderr)
    );
    // No credentials at all (kubectl would prompt for a password here: curl).
    if has("curl", &["--version"]) {
        let out = Command::new("curl")
            .args(["-sS", "-w", "\n%{http_code}", "--cacert"])
            .arg(server.data_dir.join("pki/ca.crt"))
            .arg(format!("{}/api/v1/pods", server.url))
            .output()
            .unwrap();
        let body = text(&out.stdout);
        assert!(body.ends_with("\n401"), "{body}");
        assert!(body.contains("\"reason\":\"Unauthorized\""), "{body}");
        let out = Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(server.data_dir.join("pki/ca.crt"))
            .arg(format!("{}/healthz", server.url))
            .output()
            .unwrap();
        assert_eq!(text(&out.stdout), "ok", "health stays open");
    }
    // The admin's certificate identity.
    let out = k.ok(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]);
    assert_eq!(out, "admin");

    // Discovery lists the token subresource and the authentication group.
    let res = k.ok(&["get", "--raw", "/api/v1"]);
    assert!(res.contains("\"serviceaccounts/token\""), "{res}");
    let res = k.ok(&[
        "api-resources",
        "--api-group=authentication.k8s.io",
        "-o",
        "name",
    ]);
    assert!(res.contains("selfsubjectreviews"), "{res}");

    // Every namespace has the default ServiceAccount and the CA ConfigMap.
    k.ok(&["create", "namespace", "team-a"]);
    let ca = std::fs::read_to_string(server.data_dir.join("pki/ca.crt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = k.admin(&[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "team-a",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        if out.status.success() && text(&out.stdout) == ca {
            break;
        }
        assert!(Instant::now() < deadline, "no kube-root-ca.crt in team-a");
        std::thread::sleep(Duration::from_millis(100));
    }

    // kubectl create token: a bound token for the default ServiceAccount.
    let token = k.ok(&["create", "token", "default"]).trim().to_string();
    let claims = jwt_claims(&token);
    assert_eq!(
        claims["iss"],
        "https://kubernetes.default.svc.cluster.local"
    );
    assert_eq!(
        claims["aud"],
        json!(["https://kubernetes.default.svc.cluster.local"])
    );
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    let sa_uid = k.ok(&["get", "sa", "default", "-o", "jsonpath={.metadata.uid}"]);
    assert_eq!(
        claims["kubernetes.io"]["serviceaccount"]["uid"],
        sa_uid.as_str()
    );
    let me = k.whoami(&token).unwrap();
    assert_eq!(me["username"], "system:serviceaccount:default:default");
    assert_eq!(
        me["groups"],
        json!([
            "system:serviceaccounts",
            "system:serviceaccounts:default",
            "system:authenticated"
        ])
    );
    assert_eq!(me["uid"], sa_uid.as_str());
    let out = k.with_token(&token, &["get", "--raw", "/api"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Duration and audiences.
    let long = k.ok(&["create", "token", "default", "--duration", "2h"]);
    let c = jwt_claims(long.trim());
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        7200
    );
    let out = k.admin(&["create", "token", "default", "--duration", "5m"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("may not specify a duration less than 10 minutes"),
        "{}",
        text(&out.stderr)
    );
    let vault = k.ok(&["create", "token", "default", "--audience", "vault"]);
    assert_eq!(jwt_claims(vault.trim())["aud"], json!(["vault"]));
    assert!(
        k.whoami(vault.trim()).is_err(),
        "a token for another audience is not the API's"
    );
    // TokenReview: the API audience, and another audience on request.
    let review = |tok: &str, aud: Value| -> Value {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": tok, "audiences": aud}});
        let f = tmp.path().join("review.json");
        std::fs::write(&f, body.to_string()).unwrap();
        let out = k.ok(&["create", "-f", f.to_str().unwrap(), "-o", "json"]);
        serde_json::from_str::<Value>(&out).unwrap()["status"].clone()
    };
    let st = review(vault.trim(), json!(["vault"]));
    assert_eq!(st["authenticated"], true);
    assert_eq!(
        st["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(st["audiences"], json!(["vault"]));
    assert_eq!(review(vault.trim(), json!([]))["authenticated"], false);
    assert_eq!(
        review("s3cret-alice", json!([]))["user"]["username"],
        "alice"
    );

    // A missing ServiceAccount: NotFound; a deleted one: its tokens stop working.
    let out = k.admin(&["create", "token", "ghost"]);
    assert!(
        text(&out.stderr).contains("serviceaccounts \"ghost\" not found"),
        "{}",
        text(&out.stderr)
    );
    k.ok(&["create", "serviceaccount", "builder"]);
    let builder = k.ok(&["create", "token", "builder"]).trim().to_string();
    assert_eq!(
        k.whoami(&builder).unwrap()["username"],
        "system:serviceaccount:default:builder"
    );
    k.ok(&["delete", "serviceaccount", "builder"]);
    let e = k.wait_refused(&builder, "deleted ServiceAccount");
    assert!(e.contains("Unauthorized"), "{e}");
    // Recreated under the same name: a new uid, the old token stays dead.
    k.ok(&["create", "serviceaccount", "builder"]);
    assert!(k.whoami(&builder).is_err());

    // An expired token (signed with the cluster's key, expired a minute ago).
    let signer = shoal_host::controllers::serviceaccount::TokenSigner::load_or_create(
        &server.data_dir.join("pki"),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut expired = claims.clone();
    expired["iat"] = json!(now - 4000);
    expired["nbf"] = json!(now - 4000);
    expired["exp"] = json!(now - 60);
    let expired = signer.sign_claims(&expired).unwrap();
    let e = k.whoami(&expired).unwrap_err();
    assert!(e.contains("Unauthorized"), "{e}");
    // The same claims, unexpired, are accepted: only the expiry differs.
    let mut fresh = claims.clone();
    fresh["exp"] = json!(now + 600);
    assert!(k.whoami(&signer.sign_claims(&fresh).unwrap()).is_ok());

    // ServiceAccount admission: default SA, the token volume, missing SA refused.
    k.ok(&["run", "web", "--image=busybox", "--restart=Never"]);
    let pod: Value = serde_json::from_str(&k.ok(&["get", "pod", "web", "-o", "json"])).unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], "default");
    let vol = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .expect("the kube-api-access volume")
        .clone();
    assert_eq!(
        vol["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3607
    );
    assert_eq!(
        pod["spec"]["containers"][0]["volumeMounts"][0],
        json!({"name": vol["name"], "readOnly": true,
               "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    );
    let out = k.admin(&[
        "run",
        "ghostly",
        "--image=busybox",
        "--overrides",
        r#"{"spec": {"serviceAccountName": "ghost"}}"#,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("error looking up service account default/ghost"),
        "{}",
        text(&out.stderr)
    );

    // A token bound to the pod: valid while the pod exists.
    let bound = k
        .ok(&[
            "create",
            "token",
            "default",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "web",
        ])
        .trim()
        .to_string();
    let me = k.whoami(&bound).unwrap();
    assert_eq!(
        me["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["web"])
    );
    assert_eq!(
        jwt_claims(&bound)["kubernetes.io"]["pod"]["uid"],
        pod["metadata"]["uid"]
    );
    let out = k.admin(&[
        "create",
        "token",
        "builder",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "web",
    ]);
    assert!(
        text(&out.stderr).contains("different serviceaccount name"),
        "{}",
        text(&out.stderr)
    );
    k.ok(&["delete", "pod", "web", "--grace-period=0", "--force"]);
    let e = k.wait_refused(&bound, "deleted pod");
    assert!(e.contains("Unauthorized"), "{e}");
}

/// Why the agent test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        return Some("not running as root".into());
    }
    for (bin, arg) in [("runc", "--version"), ("ip", "-V")] {
        if !has(bin, &[arg]) {
            return Some(format!("{bin} is not installed"));
        }
    }
    if !has("kubectl", &["version", "--client"]) {
        return Some("kubectl is not installed".into());
    }
    match std::fs::read("/bin/busybox") {
        Ok(b) if !common::has_interpreter(&b) => None,
        _ => Some("a static /bin/busybox is missing (apt-get install busybox-static)".into()),
    }
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
        assert!(has("ip", &["netns", "add", &name]), "ip netns add {name}");
        let ns = NetNs(name);
        assert!(has("ip", &["-n", &ns.0, "link", "set", "lo", "up"]));
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

fn in_netns(tag: &str, body: impl FnOnce() + Send + 'static) {
    let ns = NetNs::new(tag);
    let path = PathBuf::from("/run/netns").join(&ns.0);
    let result = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        body();
    })
    .join();
    drop(ns);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        common::clean_node(&self.dir);
    }
}

fn start_agent(server: &Server, tmp: &Path, node: &str, images: &Path) -> Agent {
    let out = Command::new(SHOAL)
        .args(["kubeconfig", "node", node, "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(tmp.join("node.kubeconfig"), &out.stdout).unwrap();
    let log = std::fs::File::create(tmp.join("agent.log")).unwrap();
    let mut child = Command::new(SHOAL)
        .arg("agent")
        .arg("--kubeconfig")
        .arg(tmp.join("node.kubeconfig"))
        .args(["--node-name", node, "--data-dir"])
        .arg(tmp.join("agent"))
        .arg("--image-dir")
        .arg(images)
        .args(["--agent-port", "0"])
        .args(common::NO_POD_NETWORK)
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
    let agent = Agent {
        child,
        dir: tmp.join("agent"),
    };
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let log = std::fs::read_to_string(tmp.join("agent.log")).unwrap_or_default();
        panic!("shoal agent printed no ready line; its log:\n{log}");
    }
    agent
}

/// Poll until the pod's containers all run.
fn wait_running(k: &Kubectl, pod: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = k.admin(&["get", "pod", pod, "-o", "json"]);
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let cs = v["status"]["containerStatuses"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !cs.is_empty() && cs.iter().all(|c| c["state"]["running"].is_object()) {
                return;
            }
            last = v["status"].to_string();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("pod {pod} not running in time; last status: {last}");
}

#[test]
fn pod_gets_a_projected_token_that_works_from_inside() {
    if let Some(why) = unsupported() {
        eprintln!("skipping: {why}");
        return;
    }
    in_netns("authn", || {
        let tmp = tempfile::tempdir().unwrap();
        let server = Server::start(&tmp.path().join("server"));
        let images = common::build_images(tmp.path(), &["usr/local/bin"]);
        // The real kubectl (a static Go binary) in the image, for in-cluster use.
        let kubectl = std::fs::canonicalize(which("kubectl").expect("kubectl on PATH")).unwrap();
        std::fs::copy(
            &kubectl,
            images.join("busybox/rootfs/usr/local/bin/kubectl"),
        )
        .unwrap();
        let _agent = start_agent(&server, tmp.path(), "authn-node", &images);
        let k = Kubectl {
            admin: server.kubeconfig.clone(),
            anon: anonymous_kubeconfig(&server, tmp.path()),
        };
        k.ok(&["create", "serviceaccount", "robot"]);
        allow_self_review(&k);
        // hostNetwork: the pod shares the test's network namespace, where the
        // API listens on loopback (`--pod-network none` gives other pods
        // loopback only), so its in-cluster config is pointed there.
        let port = server.port().to_string();
        let spec = json!({"spec": {
            "serviceAccountName": "robot", "hostNetwork": true, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"],
                "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                        {"name": "KUBERNETES_SERVICE_PORT", "value": port}]}]}});
        k.ok(&[
            "run",
            "robot-pod",
            "--image=busybox",
            "--restart=Never",
            "--overrides",
            &spec.to_string(),
        ]);
        wait_running(&k, "robot-pod");

        let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
        let exec = |cmd: &[&str]| -> String {
            let mut args = vec!["exec", "robot-pod", "--"];
            args.extend_from_slice(cmd);
            k.ok(&args)
        };
        let token = exec(&["cat", &format!("{dir}/token")]);
        let ca = exec(&["cat", &format!("{dir}/ca.crt")]);
        let ns = exec(&["cat", &format!("{dir}/namespace")]);
        assert_eq!(ns, "default");
        assert_eq!(
            ca,
            std::fs::read_to_string(server.data_dir.join("pki/ca.crt")).unwrap()
        );
        let listing = exec(&["ls", "-l", dir]);
        assert!(listing.contains("-rw-r--r--"), "modes: {listing}");
        // The mount is read-only.
        let out = k.admin(&[
            "exec",
            "robot-pod",
            "--",
            "sh",
            "-c",
            &format!("echo x > {dir}/token"),
        ]);
        assert!(!out.status.success(), "the token volume is writable");

        let claims = jwt_claims(&token);
        let pod_uid = k.ok(&["get", "pod", "robot-pod", "-o", "jsonpath={.metadata.uid}"]);
        assert_eq!(claims["kubernetes.io"]["pod"]["uid"], pod_uid.as_str());
        assert_eq!(
            claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
            3607
        );
        let me = k.whoami(&token).unwrap();
        assert_eq!(me["username"], "system:serviceaccount:default:robot");
        assert_eq!(
            me["extra"]["authentication.kubernetes.io/pod-name"],
            json!(["robot-pod"])
        );

        // The real kubectl inside the pod, with nothing but its in-cluster config.
        let env = exec(&["env"]);
        assert!(env.contains("KUBERNETES_SERVICE_HOST=127.0.0.1"), "{env}");
        // The rest comes from the default/kubernetes Service (10.43.0.1:443).
        assert!(env.contains("KUBERNETES_SERVICE_PORT_HTTPS=443"), "{env}");
        assert!(
            env.contains("KUBERNETES_PORT_443_TCP_ADDR=10.43.0.1"),
            "{env}"
        );
        let inside = exec(&[
            "/usr/local/bin/kubectl",
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ]);
        assert_eq!(inside, "system:serviceaccount:default:robot");
        // Exactly its bindings: nothing, then `view` in its namespace.
        let kin = |args: &[&str]| {
            let mut a = vec!["exec", "robot-pod", "--", "/usr/local/bin/kubectl"];
            a.extend_from_slice(args);
            k.admin(&a)
        };
        let out = kin(&["get", "pods", "-o", "name"]);
        assert!(
            text(&out.stderr).contains("forbidden"),
            "{}",
            text(&out.stderr)
        );
        k.ok(&[
            "create",
            "rolebinding",
            "robot-view",
            "--clusterrole=view",
            "--serviceaccount=default:robot",
        ]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let inside = loop {
            let out = kin(&["get", "pods", "-o", "name"]);
            if out.status.success() {
                break text(&out.stdout);
            }
            assert!(
                Instant::now() < deadline,
                "view binding not effective: {}",
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(inside.contains("pod/robot-pod"), "{inside}");
        let out = kin(&["get", "secrets"]);
        assert!(
            text(&out.stderr).contains("forbidden"),
            "{}",
            text(&out.stderr)
        );
        let out = kin(&["get", "pods", "-n", "kube-system"]);
        assert!(
            text(&out.stderr).contains("forbidden"),
            "{}",
            text(&out.stderr)
        );

        // Deleting the pod invalidates its token.
        k.ok(&["delete", "pod", "robot-pod", "--wait=false"]);
        let e = k.wait_refused(&token, "deleted pod");
        assert!(e.contains("Unauthorized"), "{e}");
    });
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}
