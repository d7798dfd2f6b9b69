use super::*;
use serde_json::json;

fn req<'a>(user: &'a str, groups: &'a [String], verb: &'a str) -> Request<'a> {
    Request {
        user,
        groups,
        verb,
        resource_request: true,
        ..Default::default()
    }
}

fn rule(v: Value) -> Rule {
    serde_json::from_value(v).unwrap()
}

fn res<'a>(
    r: Request<'a>,
    ns: &'a str,
    group: &'a str,
    resource: &'a str,
    sub: &'a str,
    name: &'a str,
) -> Request<'a> {
    Request {
        namespace: ns,
        api_group: group,
        resource,
        subresource: sub,
        name,
        ..r
    }
}

#[test]
fn rule_matching_follows_kubernetes() {
    let g = vec![];
    let base = req("u", &g, "get");
    let pods = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}));
    assert!(rule_allows(
        &pods,
        &res(base.clone(), "ns", "", "pods", "", "x")
    ));
    // The plain resource does not cover its subresources.
    assert!(!rule_allows(
        &pods,
        &res(base.clone(), "ns", "", "pods", "log", "x")
    ));
    // Wrong group, wrong verb.
    assert!(!rule_allows(
        &pods,
        &res(base.clone(), "ns", "apps", "pods", "", "x")
    ));
    let list = req("u", &g, "list");
    assert!(!rule_allows(
        &pods,
        &res(list.clone(), "ns", "", "pods", "", "")
    ));

    let log = rule(json!({"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]}));
    assert!(rule_allows(
        &log,
        &res(base.clone(), "ns", "", "pods", "log", "x")
    ));
    assert!(!rule_allows(
        &log,
        &res(base.clone(), "ns", "", "pods", "", "x")
    ));

    let scale = rule(json!({"verbs": ["get"], "apiGroups": ["*"], "resources": ["*/scale"]}));
    assert!(rule_allows(
        &scale,
        &res(base.clone(), "ns", "apps", "deployments", "scale", "d")
    ));
    assert!(!rule_allows(
        &scale,
        &res(base.clone(), "ns", "apps", "deployments", "", "d")
    ));
    assert!(!rule_allows(
        &scale,
        &res(base.clone(), "ns", "apps", "deployments", "status", "d")
    ));

    let star = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
    assert!(rule_allows(
        &star,
        &res(list.clone(), "", "x.io", "things", "status", "")
    ));
    // A rule's "*" verb is the only thing that grants the verb "*".
    let star_verb = req("u", &g, "*");
    assert!(rule_allows(
        &star,
        &res(star_verb.clone(), "ns", "", "pods", "", "")
    ));
    assert!(!rule_allows(
        &pods,
        &res(star_verb, "ns", "", "pods", "", "")
    ));

    let named = rule(
        json!({"verbs": ["get", "list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}),
    );
    assert!(rule_allows(
        &named,
        &res(base.clone(), "ns", "", "configmaps", "", "a")
    ));
    assert!(!rule_allows(
        &named,
        &res(base.clone(), "ns", "", "configmaps", "", "b")
    ));
    // list has no name, so a rule with resourceNames does not grant it.
    assert!(!rule_allows(
        &named,
        &res(list, "ns", "", "configmaps", "", "")
    ));
}

#[test]
fn non_resource_urls() {
    let g = vec![];
    let r = rule(json!({"verbs": ["get"], "nonResourceURLs": ["/healthz", "/apis/*"]}));
    let nr = |path| Request {
        resource_request: false,
        path,
        ..req("u", &g, "get")
    };
    assert!(rule_allows(&r, &nr("/healthz")));
    assert!(!rule_allows(&r, &nr("/healthz/ping")));
    assert!(rule_allows(&r, &nr("/apis/apps/v1")));
    assert!(rule_allows(&r, &nr("/apis/")));
    assert!(!rule_allows(&r, &nr("/apis")));
    assert!(!rule_allows(&r, &nr("/api")));
    let post = Request {
        verb: "post",
        ..nr("/healthz")
    };
    assert!(!rule_allows(&r, &post));
    // Resource rules never grant non-resource requests and vice versa.
    let pods = rule(json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}));
    assert!(!rule_allows(&pods, &nr("/healthz")));
    let all = rule(json!({"verbs": ["*"], "nonResourceURLs": ["*"]}));
    assert!(rule_allows(&all, &nr("/anything")));
    assert!(!rule_allows(
        &all,
        &res(req("u", &g, "get"), "ns", "", "pods", "", "")
    ));
}

fn feed(rbac: &mut Rbac, kind: &str, handle: u32, obj: Value) {
    rbac.observe_one(kind, handle, false, &obj.to_string());
}

fn view() -> Rbac {
    let mut r = Rbac::new();
    feed(
        &mut r,
        "ClusterRole",
        1,
        json!({"metadata": {"name": "view"}, "rules": [
            {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods", "configmaps"]}]}),
    );
    feed(
        &mut r,
        "Role",
        1,
        json!({"metadata": {"name": "cm-a", "namespace": "team"}, "rules": [
            {"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]}]}),
    );
    feed(
        &mut r,
        "ClusterRole",
        2,
        json!({"metadata": {"name": "health"}, "rules": [
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]}),
    );
    r
}

#[test]
fn role_binding_to_cluster_role_is_namespaced() {
    let mut r = view();
    feed(
        &mut r,
        "RoleBinding",
        1,
        json!({"metadata": {"name": "alice-view", "namespace": "team"},
            "roleRef": {"kind": "ClusterRole", "name": "view", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
    );
    let g = vec!["system:authenticated".to_string()];
    let list = req("alice", &g, "list");
    assert!(matches!(
        r.authorize(&res(list.clone(), "team", "", "pods", "", "")),
        Decision::Allow(_)
    ));
    assert_eq!(
        r.authorize(&res(list.clone(), "other", "", "pods", "", "")),
        Decision::NoOpinion
    );
    // All-namespace list is cluster-wide: a RoleBinding does not grant it.
    assert_eq!(
        r.authorize(&res(list.clone(), "", "", "pods", "", "")),
        Decision::NoOpinion
    );
    assert_eq!(
        r.authorize(&res(req("bob", &g, "list"), "team", "", "pods", "", "")),
        Decision::NoOpinion
    );
    // Non-resource rules are never granted through a RoleBinding.
    feed(
        &mut r,
        "RoleBinding",
        2,
        json!({"metadata": {"name": "h", "namespace": "team"},
            "roleRef": {"kind": "ClusterRole", "name": "health"},
            "subjects": [{"kind": "User", "name": "alice"}]}),
    );
    let nr = Request {
        resource_request: false,
        path: "/healthz",
        ..req("alice", &g, "get")
    };
    assert_eq!(r.authorize(&nr), Decision::NoOpinion);
}

#[test]
fn groups_service_accounts_and_roles() {
    let mut r = view();
    feed(
        &mut r,
        "RoleBinding",
        1,
        json!({"metadata": {"name": "b", "namespace": "team"},
            "roleRef": {"kind": "Role", "name": "cm-a"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": "team"},
                         {"kind": "Group", "name": "devs"}]}),
    );
    let none: Vec<String> = vec![];
    let sa = req("system:serviceaccount:team:robot", &none, "update");
    assert!(matches!(
        r.authorize(&res(sa.clone(), "team", "", "configmaps", "", "a")),
        Decision::Allow(_)
    ));
    assert_eq!(
        r.authorize(&res(sa, "team", "", "configmaps", "", "b")),
        Decision::NoOpinion
    );
    let devs = vec!["devs".to_string()];
    let d = r.authorize(&res(
        req("carol", &devs, "update"),
        "team",
        "",
        "configmaps",
        "",
        "a",
    ));
    assert_eq!(
        d,
        Decision::Allow(
            "RBAC: allowed by RoleBinding \"b/team\" of Role \"cm-a\" to Group \"devs\"".into()
        )
    );
    // A ClusterRoleBinding to the group grants cluster-wide.
    feed(
        &mut r,
        "ClusterRoleBinding",
        1,
        json!({"metadata": {"name": "all-view"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "Group", "name": "devs"}]}),
    );
    assert!(matches!(
        r.authorize(&res(req("carol", &devs, "list"), "", "", "pods", "", "")),
        Decision::Allow(_)
    ));
    // Deleting the binding removes the grant; a role that goes away does too.
    r.observe_one(
        "ClusterRoleBinding",
        1,
        true,
        &json!({"metadata": {"name": "all-view"}}).to_string(),
    );
    assert_eq!(
        r.authorize(&res(req("carol", &devs, "list"), "", "", "pods", "", "")),
        Decision::NoOpinion
    );
    r.observe_one(
        "Role",
        1,
        true,
        &json!({"metadata": {"name": "cm-a", "namespace": "team"}}).to_string(),
    );
    assert_eq!(
        r.authorize(&res(
            req("carol", &devs, "update"),
            "team",
            "",
            "configmaps",
            "",
            "a"
        )),
        Decision::NoOpinion
    );
    // A binding created before its role starts granting once the role exists.
    feed(
        &mut r,
        "Role",
        1,
        json!({"metadata": {"name": "cm-a", "namespace": "team"}, "rules": [
            {"verbs": ["update"], "apiGroups": [""], "resources": ["configmaps"]}]}),
    );
    assert!(matches!(
        r.authorize(&res(
            req("carol", &devs, "update"),
            "team",
            "",
            "configmaps",
            "",
            "zz"
        )),
        Decision::Allow(_)
    ));
}

#[test]
fn updating_a_binding_reindexes_subjects() {
    let mut r = view();
    let b = |user: &str| {
        json!({"metadata": {"name": "b"},
            "roleRef": {"kind": "ClusterRole", "name": "view"},
            "subjects": [{"kind": "User", "name": user}]})
    };
    feed(&mut r, "ClusterRoleBinding", 7, b("alice"));
    feed(&mut r, "ClusterRoleBinding", 7, b("bob"));
    let g = vec![];
    assert_eq!(
        r.authorize(&res(req("alice", &g, "get"), "x", "", "pods", "", "p")),
        Decision::NoOpinion
    );
    assert!(matches!(
        r.authorize(&res(req("bob", &g, "get"), "x", "", "pods", "", "p")),
        Decision::Allow(_)
    ));
    // A ClusterRoleBinding naming a Role is ignored.
    feed(
        &mut r,
        "ClusterRoleBinding",
        8,
        json!({"metadata": {"name": "c"}, "roleRef": {"kind": "Role", "name": "cm-a"},
            "subjects": [{"kind": "User", "name": "dave"}]}),
    );
    assert_eq!(
        r.authorize(&res(
            req("dave", &g, "update"),
            "team",
            "",
            "configmaps",
            "",
            "a"
        )),
        Decision::NoOpinion
    );
    assert_eq!(r.binding_count(), 2);
}

#[test]
fn scales_to_many_bindings() {
    let mut r = view();
    for i in 0..10_000u32 {
        feed(
            &mut r,
            "RoleBinding",
            i,
            json!({"metadata": {"name": format!("b{i}"), "namespace": format!("ns{}", i % 100)},
                "roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": format!("user{i}")}]}),
        );
    }
    let g = vec![];
    assert!(matches!(
        r.authorize(&res(
            req("user4242", &g, "get"),
            "ns42",
            "",
            "pods",
            "",
            "p"
        )),
        Decision::Allow(_)
    ));
    assert_eq!(
        r.authorize(&res(
            req("user4242", &g, "get"),
            "ns43",
            "",
            "pods",
            "",
            "p"
        )),
        Decision::NoOpinion
    );
}
