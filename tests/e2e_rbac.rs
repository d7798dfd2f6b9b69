//! Authorization end to end, with the real kubectl against a real server:
//! RBAC (the built-in Wasm authorizer plugin), the node authorizer and
//! NodeRestriction, escalation prevention, and `kubectl auth can-i`
//! (SelfSubjectAccessReview) agreeing with what the server enforces.
//!
//! Users authenticate with client certificates issued by the cluster CA
//! (CN = user, O = groups); the can-i table uses impersonation from the
//! admin (`--as`, `--as-group`), which the server checks and applies.

mod common;

use common::kubectl::run;
use common::Server;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

fn ok(kc: &Path, args: &[&str]) -> String {
    common::kubectl::ok(kc, args).0
}

fn apply(kc: &Path, yaml: &str) {
    common::kubectl::applied(kc, yaml);
}

/// Run kubectl expecting a 403; returns stderr.
fn forbidden(kc: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let (good, out, err) = run(kc, args, stdin);
    assert!(
        !good && (err.contains("(Forbidden)") || err.contains(" is forbidden: ")),
        "kubectl {args:?} should be forbidden; stdout {out} stderr {err}"
    );
    err
}

/// A kubeconfig for `user` in `groups`, signed by the cluster CA.
fn user_kubeconfig(s: &Server, dir: &Path, user: &str, groups: &[&str]) -> PathBuf {
    let pki = shoal_host::pki::Pki::load_or_create(&s.data_dir.join("pki"), &[]).unwrap();
    let cert = pki.issue_client(user, groups).unwrap();
    let kc = shoal_host::pki::kubeconfig("shoal", &s.url, &pki.ca_cert, user, &cert);
    let path = dir.join(format!("{}.kubeconfig", user.replace(':', "_")));
    std::fs::write(&path, kc).unwrap();
    path
}

fn node_kubeconfig(s: &Server, dir: &Path, node: &str) -> PathBuf {
    let out = Command::new(SHOAL)
        .args(["kubeconfig", "node", node, "--data-dir"])
        .arg(&s.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(format!("{node}.kubeconfig"));
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

/// `kubectl auth can-i` with `args`: true for "yes" (exit 0), false for "no" (exit 1).
fn can_i(kc: &Path, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    // Exit 0 prints "yes", exit 1 "no"; anything else is an error.
    let (good, stdout, stderr) = run(kc, &all, None);
    if good {
        assert!(stdout.starts_with("yes"), "{stdout}");
    } else {
        assert!(
            stdout.starts_with("no"),
            "can-i {args:?} failed: {stdout} {stderr}"
        );
    }
    good
}

/// Poll (RBAC objects reach the authorizer through a watch) until `f` holds.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn view_user_in_one_namespace() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("server"));
    let admin = s.kubeconfig.clone();
    ok(&admin, &["create", "namespace", "team"]);
    ok(&admin, &["create", "namespace", "other"]);
    ok(
        &admin,
        &["run", "web", "--image=registry.example/web:1", "-n", "team"],
    );
    ok(
        &admin,
        &[
            "create",
            "secret",
            "generic",
            "s",
            "--from-literal=k=v",
            "-n",
            "team",
        ],
    );
    let alice = user_kubeconfig(&s, tmp.path(), "alice", &["staff"]);

    // Before any binding, alice may only discover and ask.
    let err = forbidden(&alice, &["get", "pods", "-n", "team"], None);
    assert!(
        err.contains(r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "team""#),
        "{err}"
    );
    assert!(ok(&alice, &["get", "--raw", "/version"]).contains("gitVersion"));

    ok(
        &admin,
        &[
            "create",
            "rolebinding",
            "alice-view",
            "-n",
            "team",
            "--clusterrole=view",
            "--user=alice",
        ],
    );
    eventually("alice's binding", || {
        can_i(&alice, &["list", "pods", "-n", "team"])
    });

    let pods = ok(&alice, &["get", "pods", "-n", "team", "-o", "name"]);
    assert_eq!(pods.trim(), "pod/web");
    ok(&alice, &["get", "pod", "web", "-n", "team"]);

    let err = forbidden(
        &alice,
        &["run", "x", "--image=registry.example/x:1", "-n", "team"],
        None,
    );
    assert!(
        err.contains(r#"pods is forbidden: User "alice" cannot create resource "pods" in API group "" in the namespace "team""#),
        "{err}"
    );
    let err = forbidden(&alice, &["delete", "pod", "web", "-n", "team"], None);
    assert!(
        err.contains(r#"pods "web" is forbidden: User "alice" cannot delete resource "pods""#),
        "{err}"
    );
    let err = forbidden(&alice, &["get", "pods", "-n", "other"], None);
    assert!(err.contains(r#"in the namespace "other""#), "{err}");
    let err = forbidden(&alice, &["get", "pods", "-A"], None);
    assert!(err.contains("at the cluster scope"), "{err}");
    let err = forbidden(&alice, &["get", "secrets", "-n", "team"], None);
    assert!(err.contains(r#"cannot list resource "secrets""#), "{err}");
    let err = forbidden(&alice, &["get", "secret", "s", "-n", "team"], None);
    assert!(
        err.contains(r#"secrets "s" is forbidden: User "alice" cannot get resource "secrets" in API group "" in the namespace "team""#),
        "{err}"
    );
    // Non-resource URLs: discovery is open to every authenticated user, /metrics is not.
    ok(&alice, &["get", "--raw", "/apis"]);
    let err = forbidden(&alice, &["get", "--raw", "/metrics"], None);
    assert!(
        err.contains(r#"User "alice" cannot get path "/metrics""#),
        "{err}"
    );

    // Removing the binding takes the access away again.
    ok(
        &admin,
        &["delete", "rolebinding", "alice-view", "-n", "team"],
    );
    eventually("the binding to go", || {
        !can_i(&alice, &["list", "pods", "-n", "team"])
    });
    forbidden(&alice, &["get", "pods", "-n", "team"], None);
}

const SETUP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: cm-reader, namespace: team}
rules:
- {apiGroups: [""], resources: [configmaps], resourceNames: [allowed-cm], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: log-reader, namespace: team}
rules:
- {apiGroups: [""], resources: [pods/log], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: scaler}
rules:
- {apiGroups: [apps], resources: ["*/scale"], verbs: [get, update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: health-reader}
rules:
- {nonResourceURLs: [/healthz, "/logs/*"], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: lease-viewer
  labels: {rbac.authorization.k8s.io/aggregate-to-view: "true"}
rules:
- {apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: apps-all}
rules:
- {apiGroups: [apps], resources: ["*"], verbs: ["*"]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-view, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: robot-cm, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: cm-reader}
subjects: [{kind: ServiceAccount, name: robot, namespace: team}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: devs-logs, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: log-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: devs-scale}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: scaler}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: Group, name: devs}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: bob-health}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: health-reader}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: bob}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: carol-apps, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: apps-all}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: carol}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: builder-edit}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: edit}
subjects: [{kind: ServiceAccount, name: builder, namespace: other}]
"#;

/// One row: who, what (can-i arguments), Kubernetes' documented answer.
struct Case {
    who: &'static [&'static str],
    args: &'static [&'static str],
    want: bool,
    why: &'static str,
}

const ALICE: &[&str] = &["--as=alice"];
const DAVE: &[&str] = &["--as=dave", "--as-group=devs"];
const ROBOT: &[&str] = &["--as=system:serviceaccount:team:robot"];
const BUILDER: &[&str] = &["--as=system:serviceaccount:other:builder"];
const BOB: &[&str] = &["--as=bob"];
const CAROL: &[&str] = &["--as=carol"];
const EVE: &[&str] = &["--as=eve"];

const CASES: &[Case] = &[
    Case {
        who: ALICE,
        args: &["list", "pods", "-n", "team"],
        want: true,
        why: "RoleBinding to ClusterRole view",
    },
    Case {
        who: ALICE,
        args: &["get", "pods/web", "-n", "team"],
        want: true,
        why: "view grants get",
    },
    Case {
        who: ALICE,
        args: &["list", "pods", "-n", "other"],
        want: false,
        why: "RoleBinding is namespaced",
    },
    Case {
        who: ALICE,
        args: &["list", "pods", "-A"],
        want: false,
        why: "RoleBinding never grants cluster scope",
    },
    Case {
        who: ALICE,
        args: &["create", "pods", "-n", "team"],
        want: false,
        why: "view is read-only",
    },
    Case {
        who: ALICE,
        args: &["get", "secrets", "-n", "team"],
        want: false,
        why: "view excludes secrets",
    },
    Case {
        who: ALICE,
        args: &["get", "pods/web", "--subresource=log", "-n", "team"],
        want: true,
        why: "view includes pods/log",
    },
    Case {
        who: ALICE,
        args: &["create", "pods/web", "--subresource=exec", "-n", "team"],
        want: false,
        why: "view excludes pods/exec",
    },
    Case {
        who: ALICE,
        args: &["list", "leases.coordination.k8s.io", "-n", "team"],
        want: true,
        why: "aggregated into view by label",
    },
    Case {
        who: ALICE,
        args: &["list", "leases.coordination.k8s.io", "-n", "other"],
        want: false,
        why: "aggregation keeps the binding's namespace",
    },
    Case {
        who: ROBOT,
        args: &["get", "configmaps/allowed-cm", "-n", "team"],
        want: true,
        why: "ServiceAccount subject, resourceNames",
    },
    Case {
        who: ROBOT,
        args: &["get", "configmaps/other-cm", "-n", "team"],
        want: false,
        why: "name not in resourceNames",
    },
    Case {
        who: ROBOT,
        args: &["list", "configmaps", "-n", "team"],
        want: false,
        why: "resourceNames never grant list",
    },
    Case {
        who: ROBOT,
        args: &["get", "configmaps/allowed-cm", "-n", "other"],
        want: false,
        why: "Role is namespaced",
    },
    Case {
        who: DAVE,
        args: &["get", "pods/web", "--subresource=log", "-n", "team"],
        want: true,
        why: "Group subject, subresource rule",
    },
    Case {
        who: DAVE,
        args: &["get", "pods/web", "-n", "team"],
        want: false,
        why: "pods/log does not grant pods",
    },
    Case {
        who: DAVE,
        args: &["get", "pods/web", "--subresource=log", "-n", "other"],
        want: false,
        why: "Role is namespaced",
    },
    Case {
        who: DAVE,
        args: &[
            "get",
            "deployments.apps/d",
            "--subresource=scale",
            "-n",
            "team",
        ],
        want: true,
        why: "*/scale matches any resource's scale",
    },
    Case {
        who: DAVE,
        args: &[
            "update",
            "statefulsets.apps/s",
            "--subresource=scale",
            "-n",
            "other",
        ],
        want: true,
        why: "ClusterRoleBinding is cluster-wide",
    },
    Case {
        who: DAVE,
        args: &["get", "deployments.apps/d", "-n", "team"],
        want: false,
        why: "*/scale does not grant the resource",
    },
    Case {
        who: DAVE,
        args: &[
            "get",
            "deployments.apps/d",
            "--subresource=status",
            "-n",
            "team",
        ],
        want: false,
        why: "*/scale matches only scale",
    },
    Case {
        who: &["--as=dave"],
        args: &["get", "pods/web", "--subresource=log", "-n", "team"],
        want: false,
        why: "without the group, nothing",
    },
    Case {
        who: BOB,
        args: &["get", "/healthz"],
        want: true,
        why: "nonResourceURLs exact",
    },
    Case {
        who: BOB,
        args: &["get", "/logs/kube.log"],
        want: true,
        why: "nonResourceURLs prefix *",
    },
    Case {
        who: BOB,
        args: &["get", "/logs"],
        want: false,
        why: "/logs/* needs the slash",
    },
    Case {
        who: BOB,
        args: &["post", "/healthz"],
        want: false,
        why: "verb must match",
    },
    Case {
        who: BOB,
        args: &["get", "/metrics"],
        want: false,
        why: "not granted",
    },
    Case {
        who: EVE,
        args: &["get", "/version"],
        want: true,
        why: "system:public-info-viewer",
    },
    Case {
        who: EVE,
        args: &["get", "/apis/apps/v1"],
        want: true,
        why: "system:discovery /apis/*",
    },
    Case {
        who: EVE,
        args: &["create", "selfsubjectaccessreviews.authorization.k8s.io"],
        want: true,
        why: "system:basic-user",
    },
    Case {
        who: EVE,
        args: &["list", "nodes"],
        want: false,
        why: "no binding",
    },
    Case {
        who: CAROL,
        args: &["create", "deployments.apps", "-n", "team"],
        want: true,
        why: "resources * verbs * in apps",
    },
    Case {
        who: CAROL,
        args: &["delete", "statefulsets.apps/s", "-n", "team"],
        want: true,
        why: "wildcards",
    },
    Case {
        who: CAROL,
        args: &["create", "deployments.apps", "-n", "other"],
        want: false,
        why: "RoleBinding namespace",
    },
    Case {
        who: CAROL,
        args: &["get", "pods", "-n", "team"],
        want: false,
        why: "apiGroups apps only",
    },
    Case {
        who: BUILDER,
        args: &["create", "secrets", "-n", "team"],
        want: true,
        why: "ClusterRoleBinding to aggregated edit",
    },
    Case {
        who: BUILDER,
        args: &["create", "roles.rbac.authorization.k8s.io", "-n", "team"],
        want: false,
        why: "edit excludes roles",
    },
    Case {
        who: BUILDER,
        args: &[
            "create",
            "serviceaccounts/x",
            "--subresource=token",
            "-n",
            "team",
        ],
        want: true,
        why: "edit grants serviceaccounts/token",
    },
    Case {
        who: EVE,
        args: &["impersonate", "users/alice"],
        want: false,
        why: "impersonation needs the verb",
    },
];

/// The same request for real, as the same identity: true unless the server answers 403.
fn real(admin: &Path, who: &[&str], args: &[&str]) -> Option<bool> {
    let mut ns = None;
    let mut sub = None;
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        match args[i] {
            "-n" => {
                ns = Some(args[i + 1]);
                i += 1;
            }
            "-A" => {}
            a if a.starts_with("--subresource=") => sub = Some(&a["--subresource=".len()..]),
            a => rest.push(a),
        }
        i += 1;
    }
    let verb = rest[0];
    let (target, name) = match rest.get(1).copied()?.split_once('/') {
        Some((t, n)) if !t.is_empty() => (t, Some(n)),
        _ => (rest[1], None),
    };
    let mut cmd: Vec<String> = who.iter().map(|s| s.to_string()).collect();
    if target.starts_with('/') {
        if verb != "get" {
            return None;
        }
        cmd.extend(["get".into(), "--raw".into(), target.into()]);
    } else {
        let (res, group) = target.split_once('.').unwrap_or((target, ""));
        let mut url = if group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{group}/v1")
        };
        if let Some(ns) = ns {
            url += &format!("/namespaces/{ns}");
        }
        url += &format!("/{res}");
        if let Some(n) = name {
            url += &format!("/{n}");
        }
        if let Some(s) = sub {
            url += &format!("/{s}");
        }
        match verb {
            "get" | "list" => cmd.extend(["get".into(), "--raw".into(), url]),
            "create" => cmd.extend([
                "create".into(),
                "--raw".into(),
                format!("{url}?dryRun=All"),
                "-f".into(),
                "-".into(),
            ]),
            "update" => cmd.extend([
                "replace".into(),
                "--raw".into(),
                format!("{url}?dryRun=All"),
                "-f".into(),
                "-".into(),
            ]),
            "delete" => cmd.extend(["delete".into(), "--raw".into(), format!("{url}?dryRun=All")]),
            _ => return None,
        }
    }
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let (_, _, err) = run(admin, &cmd, Some("{}"));
    Some(!err.contains("(Forbidden)") && !err.contains("is forbidden"))
}

#[test]
fn can_i_agrees_with_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("server"));
    let admin = s.kubeconfig.clone();
    apply(&admin, SETUP);
    ok(
        &admin,
        &["run", "web", "--image=registry.example/web:1", "-n", "team"],
    );
    // Bindings arrive through a watch, aggregation through a controller.
    eventually("bindings", || {
        can_i(
            &admin,
            &[
                "create",
                "secrets",
                "-n",
                "team",
                "--as=system:serviceaccount:other:builder",
            ],
        )
    });
    eventually("aggregation", || {
        can_i(
            &admin,
            &[
                "list",
                "leases.coordination.k8s.io",
                "-n",
                "team",
                "--as=alice",
            ],
        )
    });
    assert!(CASES.len() >= 30);
    let mut failures = Vec::new();
    let mut real_checked = 0;
    for c in CASES {
        let mut args: Vec<&str> = c.args.to_vec();
        args.extend_from_slice(c.who);
        let got = can_i(&admin, &args);
        if got != c.want {
            failures.push(format!(
                "can-i {args:?}: got {got}, want {} ({})",
                c.want, c.why
            ));
        }
        if let Some(server) = real(&admin, c.who, c.args) {
            real_checked += 1;
            if server != got {
                failures.push(format!(
                    "{args:?}: can-i says {got}, the server {server} ({})",
                    c.why
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        real_checked >= 25,
        "only {real_checked} cases checked for real"
    );

    // SubjectAccessReview: only for those allowed to create it, with the same answers.
    let sar = r#"{"apiVersion":"authorization.k8s.io/v1","kind":"SubjectAccessReview",
        "spec":{"user":"dave","groups":["devs"],"resourceAttributes":{"namespace":"team","verb":"get","resource":"pods","subresource":"log","name":"web"}}}"#;
    let out = run(
        &admin,
        &[
            "create",
            "--raw",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            "-f",
            "-",
        ],
        Some(sar),
    );
    let (_, stdout, stderr) = out;
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("{stderr}"));
    assert_eq!(v["status"]["allowed"], true, "{v}");
    assert!(
        v["status"]["reason"]
            .as_str()
            .unwrap()
            .contains("devs-logs"),
        "{v}"
    );
    forbidden(
        &admin,
        &[
            "create",
            "--raw",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            "-f",
            "-",
            "--as=eve",
        ],
        Some(sar),
    );
    // The review kinds are discoverable.
    let res = ok(
        &admin,
        &[
            "api-resources",
            "--api-group=authorization.k8s.io",
            "-o",
            "name",
        ],
    );
    assert!(res.contains("selfsubjectaccessreviews"), "{res}");
}

#[test]
fn nodes_modify_only_themselves() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("server"));
    let admin = s.kubeconfig.clone();
    let n1 = node_kubeconfig(&s, tmp.path(), "n1");
    let node = |name: &str| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n");
    let (good, _, err) = run(&n1, &["create", "-f", "-"], Some(&node("n1")));
    assert!(good, "{err}");
    apply(&admin, &node("n2"));
    // Another node: not created, modified, labelled, deleted, nor its status.
    let err = forbidden(&n1, &["create", "-f", "-"], Some(&node("n3")));
    assert!(
        err.contains(r#"node "n1" is not allowed to modify node "n3""#),
        "{err}"
    );
    let err = forbidden(&n1, &["label", "node", "n2", "x=y"], None);
    assert!(err.contains(r#"nodes "n2" is forbidden: User "system:node:n1" cannot patch resource "nodes" in API group "" at the cluster scope"#), "{err}");
    forbidden(&n1, &["delete", "node", "n2"], None);
    forbidden(
        &n1,
        &[
            "patch",
            "node",
            "n2",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"phase":"Running"}}"#,
        ],
        None,
    );
    forbidden(&n1, &["annotate", "node", "n2", "a=b"], None);
    // Its own Node: yes, and reading others is fine.
    ok(&n1, &["label", "node", "n1", "x=y"]);
    ok(
        &n1,
        &[
            "patch",
            "node",
            "n1",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"capacity":{"cpu":"2"}}}"#,
        ],
    );
    ok(&n1, &["get", "nodes"]);
    // Leases: only its own in kube-node-lease.
    // kube-node-lease may already exist (made by the server); create it if not.
    let _ = run(&admin, &["create", "namespace", "kube-node-lease"], None);
    let lease = |name: &str| {
        format!("apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata:\n  name: {name}\n  namespace: kube-node-lease\nspec:\n  holderIdentity: {name}\n")
    };
    let (good, _, err) = run(&n1, &["create", "-f", "-"], Some(&lease("n1")));
    assert!(good, "{err}");
    forbidden(&n1, &["create", "-f", "-"], Some(&lease("n2")));
    // Secrets: only those referenced by pods bound to it.
    ok(&admin, &["create", "namespace", "app"]);
    ok(
        &admin,
        &[
            "create",
            "secret",
            "generic",
            "used",
            "--from-literal=k=v",
            "-n",
            "app",
        ],
    );
    ok(
        &admin,
        &[
            "create",
            "secret",
            "generic",
            "unused",
            "--from-literal=k=v",
            "-n",
            "app",
        ],
    );
    apply(
        &admin,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: app}
spec:
  nodeName: n1
  containers: [{name: c, image: registry.example/x:1, envFrom: [{secretRef: {name: used}}]}]
"#,
    );
    ok(&n1, &["get", "secret", "used", "-n", "app"]);
    forbidden(&n1, &["get", "secret", "unused", "-n", "app"], None);
    forbidden(&n1, &["get", "secrets", "-n", "app"], None);
    ok(&n1, &["get", "pods", "-A"]);
    // Another node cannot read n1's pod's secret, nor delete n1's pod.
    let n2 = node_kubeconfig(&s, tmp.path(), "n2");
    forbidden(&n2, &["get", "secret", "used", "-n", "app"], None);
    forbidden(&n2, &["delete", "pod", "p", "-n", "app"], None);
    // RBAC objects, namespaces: nothing.
    forbidden(&n1, &["create", "namespace", "mine"], None);
    forbidden(&n1, &["get", "clusterroles"], None);
}

#[test]
fn escalation_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("server"));
    let admin = s.kubeconfig.clone();
    ok(&admin, &["create", "namespace", "team"]);
    // alice: view in team, plus managing Roles and RoleBindings there.
    apply(
        &admin,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: rbac-manager, namespace: team}
rules:
- {apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], verbs: [create, update, patch, get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-manager, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: rbac-manager}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-view, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#,
    );
    let alice = user_kubeconfig(&s, tmp.path(), "alice", &[]);
    eventually("alice's bindings", || {
        can_i(&alice, &["create", "roles", "-n", "team"])
            && can_i(&alice, &["list", "pods", "-n", "team"])
    });

    // A Role within what she holds: fine. Beyond it: refused, naming the rule.
    ok(
        &alice,
        &[
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
            "-n",
            "team",
        ],
    );
    let err = forbidden(
        &alice,
        &[
            "create",
            "role",
            "pod-killer",
            "--verb=delete",
            "--resource=pods",
            "-n",
            "team",
        ],
        None,
    );
    assert!(
        err.contains("is attempting to grant RBAC permissions not currently held"),
        "{err}"
    );
    assert!(
        err.contains(r#"Resources:["pods"]"#) && err.contains(r#"Verbs:["delete"]"#),
        "{err}"
    );
    // Widening an existing Role by patch is checked the same way.
    let err = forbidden(
        &alice,
        &[
            "patch",
            "role",
            "pod-reader",
            "-n",
            "team",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/rules/0/verbs/-","value":"delete"}]"#,
        ],
        None,
    );
    assert!(err.contains("not currently held"), "{err}");
    // A `*` verb is only held through a `*` rule.
    forbidden(
        &alice,
        &[
            "create",
            "role",
            "star",
            "--verb=*",
            "--resource=pods",
            "-n",
            "team",
        ],
        None,
    );
    // Bindings: to a role she holds, fine; to edit or cluster-admin, refused.
    ok(
        &alice,
        &[
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "-n",
            "team",
        ],
    );
    let err = forbidden(
        &alice,
        &[
            "create",
            "rolebinding",
            "bob-edit",
            "--clusterrole=edit",
            "--user=bob",
            "-n",
            "team",
        ],
        None,
    );
    assert!(err.contains("not currently held"), "{err}");
    forbidden(
        &alice,
        &[
            "create",
            "rolebinding",
            "me-admin",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "-n",
            "team",
        ],
        None,
    );
    // With `bind` on edit she may bind it without holding it; with `escalate`
    // on roles she may write any Role.
    apply(
        &admin,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: binder, namespace: team}
rules:
- {apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], resourceNames: [edit], verbs: [bind]}
- {apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [escalate]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: alice-binder, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: binder}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}]
"#,
    );
    eventually("bind permission", || {
        can_i(&alice, &["bind", "clusterroles/edit", "-n", "team"])
    });
    ok(
        &alice,
        &[
            "create",
            "rolebinding",
            "bob-edit",
            "--clusterrole=edit",
            "--user=bob",
            "-n",
            "team",
        ],
    );
    ok(
        &alice,
        &[
            "create",
            "role",
            "pod-killer",
            "--verb=delete",
            "--resource=pods",
            "-n",
            "team",
        ],
    );
    forbidden(
        &alice,
        &[
            "create",
            "rolebinding",
            "me-admin",
            "--clusterrole=cluster-admin",
            "--user=alice",
            "-n",
            "team",
        ],
        None,
    );
    // Cluster-scoped writes stay out of reach.
    forbidden(
        &alice,
        &[
            "create",
            "clusterrole",
            "x",
            "--verb=get",
            "--resource=pods",
        ],
        None,
    );
}
